// AES-GCM records sealed and opened into buffers the caller owns (see src/transfer/native-gcm.ts).
//
// Why this exists: node's Cipher.update allocates every output (one byte too long, then a zero-filled
// copy of the right size) and so costs an allocation, a fill and a copy per call on top of the AES.
// On the data channel's sending end that was ~15% of its CPU. This addon calls the same OpenSSL that
// node links (its symbols are resolved from the node binary at load time) with the output written
// straight into a buffer of the caller's: a reused send buffer, or the message a record is opened into.
//
// One context per direction; the key is set once (its schedule reused), each record sets its IV.
#define NAPI_VERSION 8
#include <node_api.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#define THROW(env, msg) do { napi_throw_error((env), "ERR_SKYMESH_GCM", (msg)); return NULL; } while (0)
#define CHECK(env, call) do { if ((call) != napi_ok) THROW((env), "gcm: bad arguments"); } while (0)

typedef struct {
  EVP_CIPHER_CTX* ctx;
  bool encrypt;
} gcm_t;

// Marks the externals this addon made, so that no other external is taken for a context
static const napi_type_tag GCM_TAG = {0x736b796d65736867ULL, 0x636d2d6374782d31ULL};

static void gcm_free(napi_env env, void* data, void* hint) {
  (void)env; (void)hint;
  gcm_t* g = (gcm_t*)data;
  EVP_CIPHER_CTX_free(g->ctx);
  free(g);
}

static bool bytes_of(napi_env env, napi_value v, uint8_t** data, size_t* len) {
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  void* base;
  if (napi_get_typedarray_info(env, v, &type, &length, &base, &ab, &offset) != napi_ok) return false;
  if (type != napi_uint8_array) return false;
  *data = (uint8_t*)base;
  *len = length;
  return true;
}

static gcm_t* gcm_of(napi_env env, napi_value v) {
  napi_valuetype type;
  bool ours = false;
  void* p = NULL;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_external) return NULL;
  if (napi_check_object_type_tag(env, v, &GCM_TAG, &ours) != napi_ok || !ours) return NULL;
  if (napi_get_value_external(env, v, &p) != napi_ok) return NULL;
  return (gcm_t*)p;
}

// A call's `want` arguments, the first a context of this addon's: the context, or NULL
static gcm_t* context_args(napi_env env, napi_callback_info info, size_t want, napi_value* argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < want) return NULL;
  return gcm_of(env, argv[0]);
}

// create(key: Uint8Array(16|32), encrypt: boolean): External
static napi_value create(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) THROW(env, "gcm.create(key, encrypt)");
  uint8_t* key; size_t keylen;
  if (!bytes_of(env, argv[0], &key, &keylen)) THROW(env, "gcm.create: the key is not a Uint8Array");
  const EVP_CIPHER* cipher = keylen == 16 ? EVP_aes_128_gcm() : keylen == 32 ? EVP_aes_256_gcm() : NULL;
  if (!cipher) THROW(env, "gcm.create: the key is not 16 or 32 bytes");
  bool encrypt;
  CHECK(env, napi_get_value_bool(env, argv[1], &encrypt));
  gcm_t* g = (gcm_t*)malloc(sizeof(gcm_t));
  if (!g) THROW(env, "gcm.create: out of memory");
  g->ctx = EVP_CIPHER_CTX_new();
  g->encrypt = encrypt;
  if (!g->ctx || EVP_CipherInit_ex(g->ctx, cipher, NULL, key, NULL, encrypt ? 1 : 0) != 1) {
    if (g->ctx) EVP_CIPHER_CTX_free(g->ctx);
    free(g);
    THROW(env, "gcm.create: OpenSSL refused the cipher");
  }
  napi_value out;
  if (napi_create_external(env, g, gcm_free, NULL, &out) != napi_ok) {
    gcm_free(env, g, NULL);
    THROW(env, "gcm.create: napi_create_external failed");
  }
  if (napi_type_tag_object(env, out, &GCM_TAG) != napi_ok) THROW(env, "gcm.create: napi_type_tag_object failed");
  return out;
}

// begin(ctx, iv: Uint8Array(12), aad: Uint8Array): a new record under the same key
static napi_value begin(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  gcm_t* g = context_args(env, info, 3, argv);
  if (!g) THROW(env, "gcm.begin(ctx, iv, aad)");
  uint8_t *iv, *aad; size_t ivlen, aadlen;
  if (!bytes_of(env, argv[1], &iv, &ivlen) || ivlen != 12) THROW(env, "gcm.begin: the IV is not 12 bytes");
  if (!bytes_of(env, argv[2], &aad, &aadlen)) THROW(env, "gcm.begin: the AAD is not a Uint8Array");
  int n;
  if (EVP_CipherInit_ex(g->ctx, NULL, NULL, NULL, iv, g->encrypt ? 1 : 0) != 1 ||
      (aadlen > 0 && EVP_CipherUpdate(g->ctx, NULL, &n, aad, (int)aadlen) != 1))
    THROW(env, "gcm.begin: OpenSSL failed");
  return NULL;
}

// update(ctx, input: Uint8Array, output: Uint8Array): input.length bytes of output written (it may
// be the input itself, or overlap it exactly)
static napi_value update(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  gcm_t* g = context_args(env, info, 3, argv);
  if (!g) THROW(env, "gcm.update(ctx, input, output)");
  uint8_t *in, *out; size_t inlen, outlen;
  if (!bytes_of(env, argv[1], &in, &inlen) || !bytes_of(env, argv[2], &out, &outlen))
    THROW(env, "gcm.update: input and output must be Uint8Arrays");
  if (outlen < inlen) THROW(env, "gcm.update: the output is shorter than the input");
  // OpenSSL takes an int length: large inputs go in pieces
  size_t done = 0;
  while (done < inlen) {
    size_t step = inlen - done > (1u << 30) ? (1u << 30) : inlen - done;
    int n = 0;
    if (EVP_CipherUpdate(g->ctx, out + done, &n, in + done, (int)step) != 1 || (size_t)n != step)
      THROW(env, "gcm.update: OpenSSL failed");
    done += step;
  }
  return NULL;
}

// seal(ctx, tag: Uint8Array(16)): ends an encrypting record, its tag written into `tag`
static napi_value seal(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  gcm_t* g = context_args(env, info, 2, argv);
  if (!g || !g->encrypt) THROW(env, "gcm.seal(ctx, tag) on an encrypting context");
  uint8_t* tag; size_t taglen;
  if (!bytes_of(env, argv[1], &tag, &taglen) || taglen != 16) THROW(env, "gcm.seal: the tag is not 16 bytes");
  int n = 0;
  if (EVP_CipherFinal_ex(g->ctx, NULL, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
    THROW(env, "gcm.seal: OpenSSL failed");
  return NULL;
}

// open(ctx, tag: Uint8Array(16)): ends a decrypting record; true if the tag authenticates it
static napi_value open_(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  gcm_t* g = context_args(env, info, 2, argv);
  if (!g || g->encrypt) THROW(env, "gcm.open(ctx, tag) on a decrypting context");
  uint8_t* tag; size_t taglen;
  if (!bytes_of(env, argv[1], &tag, &taglen) || taglen != 16) THROW(env, "gcm.open: the tag is not 16 bytes");
  int n = 0;
  bool ok = EVP_CIPHER_CTX_ctrl(g->ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 &&
            EVP_CipherFinal_ex(g->ctx, NULL, &n) == 1;
  napi_value out;
  CHECK(env, napi_get_boolean(env, ok, &out));
  return out;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"create", NULL, create, NULL, NULL, NULL, napi_enumerable, NULL},
    {"begin", NULL, begin, NULL, NULL, NULL, napi_enumerable, NULL},
    {"update", NULL, update, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seal", NULL, seal, NULL, NULL, NULL, napi_enumerable, NULL},
    {"open", NULL, open_, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) return NULL;
  return exports;
}
