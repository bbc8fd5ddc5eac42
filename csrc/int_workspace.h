// The batch cap of cuSOLVER's batched Jacobi solvers (gesvdjBatched, syevjBatched), whose
// workspace size comes back as an int count of doubles. Torch-free and CUDA-free, so the CPU
// build tests the arithmetic (svs::_int_workspace_batch) that the CUDA kernel runs.
#pragma once

#include <cstdint>
#include <functional>

namespace svs {

// Largest batch (<= want) whose workspace count lwork_of(batch) is exact, i.e. did not overflow
// the int it is returned in. It queries the doubling chain 1, 2, 4, ... (the last step to want)
// and stops before the first answer that is not positive, or smaller than the previous one, or
// more than twice the previous one plus lwork(1). A real workspace grows at most that fast
// (affine in the batch, rounded up to an alignment, with a fixed part per call: all pass, so the
// cap is not halved to 2 matrices per call when the size is not exactly affine). An overflowed
// count fails the test: a true size in (INT_MAX, 2^32) wraps negative, and a true size of 2^32
// or more (reached from at most INT_MAX by a step that at most doubles plus lwork(1)) wraps to
// at most lwork(1), below the previous answer. At most log2(want) + 1 host-side queries.
inline int64_t int_workspace_batch(const std::function<int(int)>& lwork_of, int64_t want) {
  const int64_t first = lwork_of(1);
  int64_t batch = 1, previous = first;
  while (batch < want && first > 0) {
    const int64_t next = batch * 2 < want ? batch * 2 : want;
    const int64_t got = lwork_of(static_cast<int>(next));
    if (got <= 0 || got < previous || got > 2 * previous + first) break;
    batch = next;
    previous = got;
  }
  return batch;
}

}  // namespace svs
