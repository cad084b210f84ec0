// dst[i] = op(dst[i], src[i]) for every dtype a collective accepts; bfloat16 and float16 are
// reduced in float32. Written as plain loops over restrict pointers so the compiler vectorises
// them.
#pragma once

#include <cstddef>

#include "collectives/process_group.h"
#include "core/tensor/dtype.h"

namespace cohort::collectives::cpu {

void reduce_into(core::DType dtype, ReduceOp op, void* dst, const void* src, size_t count);
// dst[i] /= divisor, for ReduceOp::kAvg's last step.
void divide(core::DType dtype, void* dst, size_t count, int divisor);
// Throws InvalidArgument when the (dtype, op) pair is not supported.
void check_reducible(core::DType dtype, ReduceOp op, const char* what);

}  // namespace cohort::collectives::cpu
