#include "parameter_server/partition.h"

#include <algorithm>
#include <numeric>

#include "core/util/error.h"

namespace cohort::ps {

std::vector<Piece> partition(const std::vector<TensorSpec>& tensors, const PartitionOptions& o) {
  COHORT_CHECK(o.servers >= 1, "a parameter-server job needs at least 1 server, got ", o.servers);
  COHORT_CHECK(o.min_slice_bytes >= 1, "min_slice_bytes must be positive, got ", o.min_slice_bytes);
  std::vector<Piece> pieces;
  for (size_t t = 0; t < tensors.size(); ++t) {
    const auto& shape = tensors[t].shape;
    const int64_t numel =
        std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
    const int64_t rows = shape.empty() ? 1 : shape[0];
    const int64_t row_numel = rows > 0 ? numel / rows : 0;
    const int64_t bytes = numel * o.element_bytes;
    const int64_t parts = std::clamp<int64_t>(
        bytes / o.min_slice_bytes, 1, std::max<int64_t>(1, std::min<int64_t>(o.servers, rows)));
    for (int64_t p = 0; p < parts; ++p) {
      // Rows split as evenly as possible, the first ones one row larger.
      const int64_t begin = p * (rows / parts) + std::min(p, rows % parts);
      const int64_t end = begin + rows / parts + (p < rows % parts ? 1 : 0);
      Piece piece;
      piece.key = parts == 1 ? tensors[t].name : tensors[t].name + "#part" + std::to_string(p);
      piece.tensor = t;
      piece.shape = shape;
      if (!piece.shape.empty()) piece.shape[0] = end - begin;
      piece.offset = begin * row_numel;
      piece.numel = parts == 1 ? numel : (end - begin) * row_numel;
      pieces.push_back(std::move(piece));
    }
  }
  std::vector<size_t> order(pieces.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return pieces[a].numel > pieces[b].numel; });
  std::vector<int64_t> load(static_cast<size_t>(o.servers), 0);
  for (size_t i : order) {
    const auto least = std::min_element(load.begin(), load.end()) - load.begin();
    pieces[i].server = static_cast<int>(least);
    load[static_cast<size_t>(least)] += pieces[i].numel;
  }
  return pieces;
}

}  // namespace cohort::ps
