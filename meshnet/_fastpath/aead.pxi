# AEAD: AES-256-GCM through libcrypto's EVP, one seal or open per datagram, in place.
# A context keeps its expanded key, so nothing is set up per datagram but the nonce.
# The reference (and the twin's AEAD) is meshnet/dataplane/sleeve_crypto.py.

# The cipher is compiled in below: refuse a layout.py that names another one.
if _layout.AEAD != "AES-256-GCM":
    raise ImportError(f"meshnet._fastpath implements AES-256-GCM, layout.py says {_layout.AEAD}")


cdef EVP_CIPHER_CTX *aead_new(const uint8_t *key, bint encrypt) noexcept nogil:
    cdef EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new()
    cdef int ok
    if ctx == NULL:
        return NULL
    if encrypt:
        ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    else:
        ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, key, NULL)
    if ok != 1:
        EVP_CIPHER_CTX_free(ctx)
        return NULL
    return ctx


cdef inline void make_nonce(uint8_t *nonce, const uint8_t *counter) noexcept nogil:
    nonce[0] = 0
    nonce[1] = 0
    nonce[2] = 0
    nonce[3] = 0
    memcpy(nonce + 4, counter, COUNTER_LEN)


cdef bint aead_seal(EVP_CIPHER_CTX *ctx, const uint8_t *ad, const uint8_t *src, size_t n,
                    uint8_t *dst) noexcept nogil:
    """dst[0:n] = ciphertext of src (may be the same memory), dst[n:n+16] = tag.
    ad: the 20 bytes of header and counter (the nonce is built from the counter)."""
    cdef uint8_t nonce[12]
    cdef int outl = 0, finl = 0
    make_nonce(nonce, ad + HEADER_LEN)
    if EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return False
    if EVP_EncryptUpdate(ctx, NULL, &outl, ad, SEALED_HEADER_LEN) != 1:
        return False
    if n and EVP_EncryptUpdate(ctx, dst, &outl, src, <int>n) != 1:
        return False
    if EVP_EncryptFinal_ex(ctx, dst + outl, &finl) != 1:
        return False
    return EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, dst + n) == 1


cdef bint aead_open(EVP_CIPHER_CTX *ctx, uint8_t *d, size_t n) noexcept nogil:
    """Open the sealed datagram d[0:n] in place (plaintext at d + 20); False if forged."""
    cdef uint8_t nonce[12]
    cdef int outl = 0, finl = 0
    cdef size_t body = n - SEALED_HEADER_LEN - TAG_LEN
    make_nonce(nonce, d + HEADER_LEN)
    if EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1:
        return False
    if EVP_DecryptUpdate(ctx, NULL, &outl, d, SEALED_HEADER_LEN) != 1:
        return False
    if body and EVP_DecryptUpdate(ctx, d + SEALED_HEADER_LEN, &outl, d + SEALED_HEADER_LEN,
                                  <int>body) != 1:
        return False
    if EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, d + n - TAG_LEN) != 1:
        return False
    return EVP_DecryptFinal_ex(ctx, d + SEALED_HEADER_LEN + outl, &finl) == 1


def _aead_bench(cipher, int size, int count, bint open_too=False):
    """Seal (and open, if open_too) `count` sleeve datagrams carrying `size`-byte frames in
    place with libcrypto, without the GIL; returns the datagrams that verified. For
    bench/test_micro.py and the AEAD choice (cipher: "aes-256-gcm" or "chacha20-poly1305")."""
    cdef uint8_t key[KEY_LEN]
    cdef uint8_t *buf = <uint8_t *>calloc(1, <size_t>size + SEALED_HEADER_LEN + TAG_LEN)
    cdef EVP_CIPHER_CTX *tx
    cdef EVP_CIPHER_CTX *rx
    cdef int i, ok = 0
    if buf == NULL:
        raise MemoryError()
    memset(key, 7, KEY_LEN)
    tx = EVP_CIPHER_CTX_new()
    rx = EVP_CIPHER_CTX_new()
    if cipher == "aes-256-gcm":
        EVP_EncryptInit_ex(tx, EVP_aes_256_gcm(), NULL, key, NULL)
        EVP_DecryptInit_ex(rx, EVP_aes_256_gcm(), NULL, key, NULL)
    elif cipher == "chacha20-poly1305":
        EVP_EncryptInit_ex(tx, EVP_chacha20_poly1305(), NULL, key, NULL)
        EVP_DecryptInit_ex(rx, EVP_chacha20_poly1305(), NULL, key, NULL)
    else:
        EVP_CIPHER_CTX_free(tx)
        EVP_CIPHER_CTX_free(rx)
        free(buf)
        raise ValueError(cipher)
    with nogil:
        for i in range(count):
            put_header(buf, FLAG_SEALED, DEFAULT_TTL, 1, 2)
            store_be64(buf + HEADER_LEN, <uint64_t>i)
            aead_seal(tx, buf, buf + SEALED_HEADER_LEN, <size_t>size, buf + SEALED_HEADER_LEN)
            if open_too and aead_open(rx, buf, <size_t>size + SEALED_HEADER_LEN + TAG_LEN):
                ok += 1
    EVP_CIPHER_CTX_free(tx)
    EVP_CIPHER_CTX_free(rx)
    free(buf)
    return ok
