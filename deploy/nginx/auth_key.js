// The auth cache key: a SHA-256 of the Authorization header, so tokens never sit in the
// cache's index or file names.
function key(r) {
    const header = r.headersIn.Authorization || '';
    return require('crypto').createHash('sha256').update(header).digest('hex');
}

export default { key };
