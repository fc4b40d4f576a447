/* The ops in plain C, for checking the kernels: each computes in double (the oracle) or
   emulates the Python reference in the input dtype (mirasol/reference: 16-bit matmul
   outputs and softmax probabilities, float32 accumulation), for the parity rule of
   DESIGN.md section 5: err(kernel) <= 2 err(reference in dtype) + floor. */
#ifndef MIRASOL_REFERENCE_H
#define MIRASOL_REFERENCE_H

#include <stdint.h>

#include "mirasol.h"

#define REF_ORACLE (-1) /* `dtype` argument: compute in double */

uint16_t ref_to_bits(float x, mirasol_dtype dtype); /* round to nearest even */
float ref_from_bits(uint16_t bits, mirasol_dtype dtype);
float ref_round(double x, int dtype); /* REF_ORACLE: to float, else through the dtype */

/* One attention row: out (d) and its log-sum-exp (natural log) over the keys with
   visible[j] != 0 among n_keys rows of k/v (key_stride elements apart); no visible key:
   out = 0, lse = -inf. */
void ref_attention_row(const float *q, const float *k, const float *v, int key_stride,
                       const unsigned char *visible, int n_keys, int d, double scale,
                       int dtype, double *out, double *lse);

/* One pooling segment: out[j] = sum_n softmax_n(logits[n, j]) x[n], x (n, d) and logits
   (n, m) row-major; n = 0 gives zeros. out is (m, d). */
void ref_token_pool_segment(const float *x, const float *logits, int n, int d, int m,
                            int dtype, double *out);

#endif
