/* qcc runtime: the few helpers every generated model shares.
 * C99, freestanding: <stdint.h>, <stddef.h> and <string.h> only; no libm, no malloc. */
#ifndef QCC_RT_H
#define QCC_RT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Bit layout of packed tensors: bit i of word j is channel 64*j + i; bit 1 means +1. */
#define QCC_WORD_BITS 64
#define QCC_WORDS(c) (((c) + QCC_WORD_BITS - 1) / QCC_WORD_BITS)

/* Geometry of one conv layer, NHWC in and out; weights are [co][ky][kx][ci/group]. */
typedef struct {
    int32_t n, h, w, c;          /* input */
    int32_t oh, ow, co;          /* output */
    int32_t kh, kw, sh, sw, pt, pl, group;
} qcc_conv_geom;

/* Geometry of one pooling op, NHWC. */
typedef struct {
    int32_t n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pl, pb, pr, count_include_pad;
} qcc_pool_geom;

static inline int32_t qcc_popcount64(uint64_t v) {
#if defined(__GNUC__) || defined(__clang__)
    return (int32_t)__builtin_popcountll(v);
#else
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (int32_t)((v * 0x0101010101010101ULL) >> 56);
#endif
}

/* Rounding without libm, for values already clamped to a small integer range. */
static inline float qcc_floorf(float v) {
    float t = (float)(int64_t)v;
    return t > v ? t - 1.0f : t;
}
static inline float qcc_ceilf(float v) { return -qcc_floorf(-v); }
static inline float qcc_signf(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }
static inline float qcc_absf(float v) { return v < 0.0f ? -v : v; }
static inline float qcc_round_half_even(float v) {
    float f = qcc_floorf(v), d = v - f;  /* exact: f and v are within 1 */
    if (d > 0.5f) return f + 1.0f;
    if (d < 0.5f) return f;
    return ((int64_t)f & 1) ? f + 1.0f : f;
}

enum { QCC_ROUND, QCC_CEIL, QCC_FLOOR, QCC_UP, QCC_DOWN, QCC_HALF_UP, QCC_HALF_DOWN };

static inline float qcc_round_mode(float v, int mode) {
    switch (mode) {
    case QCC_CEIL: return qcc_ceilf(v);
    case QCC_FLOOR: return qcc_floorf(v);
    case QCC_UP: return qcc_signf(v) * qcc_ceilf(qcc_absf(v));
    case QCC_DOWN: return (float)(int64_t)v;
    case QCC_HALF_UP: return qcc_signf(v) * qcc_floorf(qcc_absf(v) + 0.5f);
    case QCC_HALF_DOWN: return qcc_signf(v) * qcc_ceilf(qcc_absf(v) - 0.5f);
    default: return qcc_round_half_even(v);
    }
}

/* exp(x) for softmax, without libm: x = k*ln2 + r, |r| <= ln2/2, degree-7 Taylor of e^r,
 * scaled by 2^k through the exponent bits. Relative error below 2e-7. */
static inline float qcc_expf(float x) {
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) x = 88.0f;
    float kf = qcc_round_half_even(x * 1.44269504088896341f);
    float r = (x - kf * 0.693145751953125f) - kf * 1.428606765330187045e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    union { float f; uint32_t u; } s;
    s.u = (uint32_t)((int32_t)kf + 127) << 23;
    return p * s.f;
}

#endif /* QCC_RT_H */
