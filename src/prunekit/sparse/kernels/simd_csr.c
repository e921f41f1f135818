/* CSR sparse-matrix x vector, y = W @ x, batch 1. The row reduction is a gather + FMA loop that
   gcc vectorises (AVX2 / AVX-512 gathers) under -O3 -march=native -ffast-math -fopenmp-simd. */
#include <stdint.h>

#define SPMV(NAME, COL_T)                                                                        \
    void NAME(int64_t rows, const int64_t* row_ptr, const COL_T* col, const float* val,          \
              const float* x, float* out) {                                                      \
        for (int64_t i = 0; i < rows; ++i) {                                                     \
            float acc = 0.f;                                                                     \
            _Pragma("omp simd reduction(+:acc)")                                                 \
            for (int64_t k = row_ptr[i]; k < row_ptr[i + 1]; ++k) acc += val[k] * x[col[k]];     \
            out[i] = acc;                                                                        \
        }                                                                                        \
    }

SPMV(spmv_u16, uint16_t)
SPMV(spmv_i32, int32_t)
