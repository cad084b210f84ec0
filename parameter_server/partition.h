// Placement of a model's parameters on S parameter servers, by bytes (as TensorFlow's
// MinSizePartitioner with a greedy placement): a tensor larger than min_slice_bytes is split along
// its first dimension into up to S pieces of at least that size; then pieces go largest first to
// the server with the fewest bytes so far. Every worker computes the same placement from the same
// model, so nothing about it travels on the wire but the pieces' keys and shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace cohort::ps {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
};

// Rows [row_begin, row_end) of tensor `tensor`'s first dimension: elements [offset, offset + numel)
// of the contiguous tensor.
struct Piece {
  std::string key;  // the tensor's name, with "#part<i>" when it is split
  size_t tensor = 0;
  std::vector<int64_t> shape;
  int64_t offset = 0, numel = 0;
  int server = 0;
};

struct PartitionOptions {
  int servers = 1;
  int64_t min_slice_bytes = 256 << 10;
  int64_t element_bytes = 4;
};

// Pieces in tensor order, each tensor's pieces in row order. Throws InvalidArgument for servers
// < 1.
std::vector<Piece> partition(const std::vector<TensorSpec>& tensors, const PartitionOptions& o);

}  // namespace cohort::ps
