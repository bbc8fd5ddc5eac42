// The launch tables of the Triton reconstruction (svs_kernels/triton_ops/reconstruct.py), built
// from the operands' metadata in C++: with a hundred small matrices, reading sizes, strides and
// data pointers and laying out the tables in Python cost more host time than the kernels take on
// the GPU. Only metadata is read, so the operators run on tensors of any device.
//
//   svs::_reconstruct_plan  the checks of svs::_reconstruct, then per dtype combination of the
//                           operands and per workspace chunk: the sigma-map table, the staging jobs
//                           per layout and the GEMM rows, aligned and remainder (row layouts: the
//                           comments of sigma_map.py, stage.py and gemm.py)
//   svs::_gemm_config       the GEMM shape rule alone (gemm.choose_config)
//   svs::_launch_layout     the layout below (dtype indices, launch kinds, stage layouts, row
//                           widths), which svs_kernels/triton_ops/_layout.py reads: stated here only
#include <ATen/ATen.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace svs {
namespace {

// ---------------------------------------------------------------------------------------------
// the layout (svs::_launch_layout gives it to Python)

// Dtype indices: the dtypes by their index in the tables, with their torch names.
constexpr std::array<c10::ScalarType, 4> kDtypes = {at::kHalf, at::kBFloat16, at::kFloat, at::kDouble};
constexpr const char* kDtypeNames[] = {"float16", "bfloat16", "float32", "float64"};
static_assert(std::size(kDtypeNames) == kDtypes.size(), "a name per dtype");
constexpr int64_t kFloat32 = 2, kFloat64 = 3;

// Launch kinds and the width of a launch record (reconstruct.py decodes them):
//   CHUNK [kind, at, count, end, workspace elements, operand dtype, s dtype, f(s) offset,
//          end of its relocations, workspace bytes of its dtype group]: a workspace and the
//          sigma-map launch over table[at:end)'s header and count rows
//   STAGE [kind, at, count, source dtype, operand dtype, layout, out dtype, programs, 0, 0]
//   GEMM  [kind, at, count, config index, operand dtype, out dtype, aligned, programs, 0, 0]
enum Kind : int64_t { CHUNK = 0, STAGE = 1, GEMM = 2 };
constexpr const char* kKindNames[] = {"chunk", "stage", "gemm"};
constexpr int64_t kRecord = 10;

// Stage layouts (stage.py's LAYOUT): the unit stride of every source of a launch, if any.
enum Layout : int64_t { GENERAL = 0, ROW_MAJOR = 1, COL_MAJOR = 2 };
constexpr const char* kLayoutNames[] = {"general", "row_major", "col_major"};

// Table rows, in int64 fields (the comments of sigma_map.py, stage.py and gemm.py name the fields):
// the sigma-map header and rows, a staging job, a GEMM row.
constexpr int64_t kMapRow = 4, kStageRow = 10, kGemmRow = 10;

constexpr int64_t kLimit = int64_t{1} << 31;  // the kernels' sizes and tile offsets are int32

// The four operand lists (u, s, vh, out) as the dispatcher's stack holds them: the tensors are
// read in place (a TensorList argument would copy all 4 x G of them first: 3 to 4 us of the
// plan's 60 for 113 matrices, measured with benchmarks/bench_host_reconstruct.py).
struct Operands {
  std::array<c10::ArrayRef<c10::IValue>, 4> lists;

  size_t size() const { return lists[3].size(); }
  const at::Tensor& get(size_t list, size_t i) const { return lists[list][i].toTensor(); }
};

// One matrix as the kernels address it (strides in elements), and its padded sizes once its
// group's GEMM config is known.
struct Matrix {
  int64_t m, n, k;
  int64_t u_ptr, u_s0, u_s1, s_ptr, s_s, v_ptr, v_s0, v_s1, o_ptr, o_s0, o_s1;
  int64_t mp = 0, np = 0, kp = 0;
  int64_t a_lo() const { return mp * kp; }  // elements of one A (resp. B) plane
  int64_t b_lo() const { return kp * np; }
};

// The matrices of one dtype combination (u, s, vh, out), in call order.
struct Group {
  std::array<int64_t, 4> dtypes;
  std::vector<int64_t> index;
};

// What reconstruct.py passes besides the tensors.
struct Settings {
  int64_t power_bits;
  std::array<std::vector<int64_t>, 2> tiles;  // float32, float64: (block_m, block_n, block_k) candidates
  std::vector<int64_t> planes;                // [operand (0 float32, 1 float64)][out dtype]
  int64_t programs, stage_block_r, stage_block_c, workspace_bytes;
};

struct Plan {
  std::vector<int64_t> table, launches, relocs;

  void record(std::initializer_list<int64_t> fields) {
    launches.insert(launches.end(), fields);
    launches.resize(launches.size() + kRecord - fields.size(), 0);
  }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> tensors() const {
    return {to_tensor(table, {static_cast<int64_t>(table.size())}),
            to_tensor(launches, {static_cast<int64_t>(launches.size()) / kRecord, kRecord}),
            to_tensor(relocs, {static_cast<int64_t>(relocs.size())})};
  }
  static at::Tensor to_tensor(const std::vector<int64_t>& v, at::IntArrayRef shape) {
    at::Tensor t = at::empty(shape, at::TensorOptions().dtype(at::kLong));
    if (!v.empty()) std::memcpy(t.data_ptr<int64_t>(), v.data(), v.size() * sizeof(int64_t));
    return t;
  }
};

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p <<= 1;
  return p;
}

int64_t ptr(const at::Tensor& t) { return reinterpret_cast<int64_t>(t.data_ptr()); }

// A shape as Python prints a tuple: (3, 2), (2,), ().
std::string tuple_str(at::IntArrayRef sizes) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  os << (sizes.size() == 1 ? ",)" : ")");
  return os.str();
}

// ---------------------------------------------------------------------------------------------
// checks (the messages of svs::_reconstruct)

constexpr const char* kNames[] = {"u", "s", "vh", "out"};

void check_devices(const Operands& x) {
  const c10::Device device = x.get(3, 0).device();
  for (size_t l = 0; l < 4; ++l) {
    for (size_t i = 0; i < x.size(); ++i) {
      TORCH_CHECK(x.get(l, i).device() == device, "svs._reconstruct: ", kNames[l], "[", i, "] is on ",
                  x.get(l, i).device(), " but out[0] is on ", device);
    }
  }
}

void check_shapes(const Operands& x) {
  for (size_t i = 0; i < x.size(); ++i) {
    auto u = x.get(0, i).sizes(), s = x.get(1, i).sizes(), v = x.get(2, i).sizes(), o = x.get(3, i).sizes();
    TORCH_CHECK(u.size() == 2 && s.size() == 1 && v.size() == 2 && o.size() == 2, "svs._reconstruct: matrix ", i,
                ": expected u 2-D, s 1-D, vh 2-D, out 2-D, got shapes ", tuple_str(u), ", ", tuple_str(s), ", ",
                tuple_str(v), ", ", tuple_str(o));
    TORCH_CHECK(s[0] == u[1] && v[0] == u[1] && o[0] == u[0] && o[1] == v[1], "svs._reconstruct: matrix ", i,
                ": shapes u ", tuple_str(u), ", s ", tuple_str(s), ", vh ", tuple_str(v), ", out ", tuple_str(o),
                " do not fit u (m, k), s (k,), vh (k, n), out (m, n)");
  }
}

void check_dims(const Operands& x) {
  for (size_t i = 0; i < x.size(); ++i) {
    TORCH_CHECK(std::max({x.get(0, i).size(0), x.get(0, i).size(1), x.get(2, i).size(1)}) < kLimit,
                "svs._reconstruct: a matrix has a dimension >= 2^31");
  }
}

int64_t dtype_index(c10::ScalarType t) {
  auto it = std::find(kDtypes.begin(), kDtypes.end(), t);
  return it == kDtypes.end() ? -1 : it - kDtypes.begin();
}

// The dtype combinations in order of first use; each one's dtypes are checked when first seen, so
// the error names the first matrix with that combination.
std::vector<Group> group_by_dtype(const Operands& x) {
  std::vector<Group> groups;
  for (size_t i = 0; i < x.size(); ++i) {
    std::array<int64_t, 4> key;
    for (size_t l = 0; l < 4; ++l) key[l] = dtype_index(x.get(l, i).scalar_type());
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) { return g.dtypes == key; });
    if (it == groups.end()) {
      for (size_t l = 0; l < 4; ++l) {
        TORCH_CHECK(key[l] >= 0, "svs._reconstruct: ", kNames[l], "[", i, "] has dtype ", x.get(l, i).scalar_type(),
                    "; expected a float dtype (float16, bfloat16, float32 or float64)");
      }
      groups.push_back({key, {}});
      it = groups.end() - 1;
    }
    it->index.push_back(static_cast<int64_t>(i));
  }
  return groups;
}

Matrix read(const Operands& x, size_t i) {
  const at::Tensor &u = x.get(0, i), &s = x.get(1, i), &v = x.get(2, i), &o = x.get(3, i);
  return {u.size(0), v.size(1),   u.size(1),   ptr(u), u.stride(0), u.stride(1), ptr(s),
          s.stride(0), ptr(v), v.stride(0), v.stride(1), ptr(o), o.stride(0), o.stride(1)};
}

// ---------------------------------------------------------------------------------------------
// the GEMM shape rule

int64_t tile_count(int64_t block_m, int64_t block_n, const std::vector<int64_t>& m, const std::vector<int64_t>& n) {
  int64_t count = 0;
  for (size_t i = 0; i < m.size(); ++i) count += cdiv(m[i], block_m) * cdiv(n[i], block_n);
  return count;
}

// Index into tiles ((block_m, block_n, block_k) per candidate, largest first): the largest tile
// that is not larger than every matrix (next power of two of the largest m and n) and still gives
// every program a tile; else the smallest candidate that fits, else the smallest.
int64_t choose_tile(const std::vector<int64_t>& m, const std::vector<int64_t>& n, at::IntArrayRef tiles,
                    int64_t programs) {
  const int64_t count = static_cast<int64_t>(tiles.size()) / 3;
  TORCH_CHECK(count > 0 && tiles.size() % 3 == 0 && *std::min_element(tiles.begin(), tiles.end()) > 0,
              "svs._gemm_config: tiles must be positive (block_m, block_n, block_k) triples");
  const int64_t max_m = m.empty() ? 0 : *std::max_element(m.begin(), m.end());
  const int64_t max_n = n.empty() ? 0 : *std::max_element(n.begin(), n.end());
  int64_t last_fit = -1;
  for (int64_t c = 0; c < count; ++c) {
    if (tiles[3 * c] > std::max<int64_t>(next_pow2(max_m), 32) || tiles[3 * c + 1] > std::max<int64_t>(next_pow2(max_n), 64))
      continue;
    if (tile_count(tiles[3 * c], tiles[3 * c + 1], m, n) >= programs) return c;
    last_fit = c;
  }
  return last_fit >= 0 ? last_fit : count - 1;
}

// ---------------------------------------------------------------------------------------------
// tables

// The stage layout of a source (a size-1 dimension's stride does not matter).
Layout layout(int64_t s0, int64_t s1, int64_t rows, int64_t cols) {
  if (s1 == 1 || cols == 1) return ROW_MAJOR;
  if (s0 == 1 || rows == 1) return COL_MAJOR;
  return GENERAL;
}

// Appends a row of Width fields whose fields at `moved` are workspace byte offsets
// (reconstruct.py adds the workspace's address to each relocation).
template <int64_t Width>
void add_row(Plan& plan, std::initializer_list<int64_t> row, std::initializer_list<int64_t> moved) {
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(row.size()) == Width, "svs._reconstruct_plan: a row of ", row.size(),
                        " fields where the layout says ", Width);
  const int64_t at = static_cast<int64_t>(plan.table.size());
  for (int64_t f : moved) plan.relocs.push_back(at + f);
  plan.table.insert(plan.table.end(), row.begin(), row.end());
}

// Workspace offsets (elements) of one chunk: the A planes of every matrix, then the B planes,
// then f(s) packed.
struct Workspace {
  std::vector<int64_t> a, b, fs;
  int64_t fs_at = 0, elements = 0;

  Workspace(c10::ArrayRef<Matrix> mats, int64_t planes) {
    int64_t at = 0;
    for (const Matrix& x : mats) a.push_back(std::exchange(at, at + planes * x.a_lo()));
    for (const Matrix& x : mats) b.push_back(std::exchange(at, at + planes * x.b_lo()));
    fs_at = at;
    for (const Matrix& x : mats) fs.push_back(std::exchange(at, at + x.k));
    elements = at + 1;
  }
};

// The staging jobs of one operand (U: A planes scaled by f(s); Vh: B planes), one launch per layout.
void add_stage(Plan& plan, c10::ArrayRef<Matrix> mats, const Workspace& ws, bool u, int64_t es,
               const std::array<int64_t, 4>& dtypes, int64_t op, const Settings& cfg) {
  for (Layout lay : {ROW_MAJOR, COL_MAJOR, GENERAL}) {
    const int64_t at = static_cast<int64_t>(plan.table.size());
    int64_t count = 0, tiles = 0;
    for (size_t i = 0; i < mats.size(); ++i) {
      const Matrix& x = mats[i];
      const int64_t rows = u ? x.m : x.k, cols = u ? x.k : x.n, s0 = u ? x.u_s0 : x.v_s0, s1 = u ? x.u_s1 : x.v_s1;
      if (layout(s0, s1, rows, cols) != lay) continue;
      const int64_t rows_p = u ? x.mp : x.kp, cols_p = u ? x.kp : x.np;
      if (u) {
        add_row<kStageRow>(plan, {x.u_ptr, ws.fs[i] * es, ws.a[i] * es, rows, cols, s0, s1, rows_p, cols_p, x.a_lo()},
                           {1, 2});
      } else {
        add_row<kStageRow>(plan, {x.v_ptr, 0, ws.b[i] * es, rows, cols, s0, s1, rows_p, cols_p, x.b_lo()}, {2});
      }
      ++count;
      tiles += cdiv(rows_p, cfg.stage_block_r) * cdiv(cols_p, cfg.stage_block_c);
    }
    if (count) {
      plan.record({STAGE, at, count, dtypes[u ? 0 : 2], op, lay, dtypes[3],
                   std::max<int64_t>(1, std::min(cfg.programs * 8, tiles))});
    }
  }
}

// The GEMM rows: outputs that are row-major, 16-byte aligned and a tile multiple in an ALIGNED
// launch (unmasked stores), the rest in a masked one.
void add_gemm(Plan& plan, c10::ArrayRef<Matrix> mats, const Workspace& ws, int64_t es, int64_t tile,
              const int64_t* blocks, const std::array<int64_t, 4>& dtypes, int64_t op, const Settings& cfg) {
  const int64_t o_es = c10::elementSize(kDtypes[dtypes[3]]);
  for (bool aligned : {true, false}) {
    const int64_t at = static_cast<int64_t>(plan.table.size());
    std::vector<int64_t> m, n;
    for (size_t i = 0; i < mats.size(); ++i) {
      const Matrix& x = mats[i];
      const bool is_aligned = x.o_s1 == 1 && x.o_ptr % 16 == 0 && (x.o_s0 * o_es) % 16 == 0 &&
                              x.m % blocks[0] == 0 && x.n % blocks[1] == 0;
      if (is_aligned != aligned) continue;
      add_row<kGemmRow>(plan, {ws.a[i] * es, ws.b[i] * es, x.o_ptr, x.m, x.n, x.kp, x.o_s0, x.o_s1, x.a_lo(), x.b_lo()},
                        {0, 1});
      m.push_back(x.m);
      n.push_back(x.n);
    }
    if (!m.empty()) {
      const int64_t programs = std::max<int64_t>(1, std::min(cfg.programs, tile_count(blocks[0], blocks[1], m, n)));
      plan.record({GEMM, at, static_cast<int64_t>(m.size()), tile, op, dtypes[3], aligned, programs});
    }
  }
}

// One workspace's worth of matrices: its sigma-map, staging and GEMM tables and launches.
void add_chunk(Plan& plan, c10::ArrayRef<Matrix> mats, const std::array<int64_t, 4>& dtypes, int64_t op,
               int64_t planes, int64_t tile, const int64_t* blocks, int64_t group_bytes, const Settings& cfg) {
  const int64_t es = op == kFloat64 ? 8 : 4;
  const Workspace ws(mats, planes);
  const int64_t at = static_cast<int64_t>(plan.table.size());
  const size_t chunk = plan.launches.size();
  plan.record({CHUNK});
  add_row<kMapRow>(plan, {cfg.power_bits, 0, 0, 0}, {});  // sigma_map.py's header
  for (size_t i = 0; i < mats.size(); ++i) {
    add_row<kMapRow>(plan, {mats[i].s_ptr, mats[i].k, mats[i].s_s, ws.fs[i] - ws.fs_at}, {});
  }
  add_stage(plan, mats, ws, true, es, dtypes, op, cfg);
  add_stage(plan, mats, ws, false, es, dtypes, op, cfg);
  add_gemm(plan, mats, ws, es, tile, blocks, dtypes, op, cfg);
  const int64_t fields[kRecord] = {CHUNK, at, static_cast<int64_t>(mats.size()), static_cast<int64_t>(plan.table.size()),
                                   ws.elements, op, dtypes[1], ws.fs_at, static_cast<int64_t>(plan.relocs.size()),
                                   group_bytes};
  std::copy(fields, fields + kRecord, plan.launches.begin() + chunk);
}

// One dtype combination: its GEMM config, padding, and chunks whose workspace fits the cap (a
// matrix larger than the cap gets a chunk of its own).
void add_group(Plan& plan, std::vector<Matrix>& mats, const std::array<int64_t, 4>& dtypes, const Settings& cfg) {
  const int64_t op = (dtypes[0] == kFloat64 || dtypes[2] == kFloat64) ? kFloat64 : kFloat32;
  const std::vector<int64_t>& tiles = cfg.tiles[op - kFloat32];
  std::vector<int64_t> m, n;
  for (const Matrix& x : mats) {
    m.push_back(x.m);
    n.push_back(x.n);
  }
  const int64_t tile = choose_tile(m, n, tiles, cfg.programs);
  const int64_t* blocks = tiles.data() + 3 * tile;
  const int64_t planes = cfg.planes.at((op - kFloat32) * 4 + dtypes[3]);
  const int64_t es = op == kFloat64 ? 8 : 4;
  std::vector<int64_t> bytes;
  for (Matrix& x : mats) {
    x.mp = round_up(x.m, blocks[0]);
    x.np = round_up(x.n, blocks[1]);
    x.kp = round_up(x.k, blocks[2]);
    TORCH_CHECK(x.a_lo() < kLimit && x.b_lo() < kLimit,
                "svs._reconstruct (Triton): a factor has 2^31 or more elements after padding");
    bytes.push_back(planes * (x.a_lo() + x.b_lo()) * es);
  }
  int64_t total = 0;
  for (int64_t b : bytes) total += b;
  size_t first = 0;
  int64_t sum = 0;
  for (size_t i = 0; i <= mats.size(); ++i) {
    const bool end = i == mats.size();
    if (end || (total > cfg.workspace_bytes && sum && sum + bytes[i] > cfg.workspace_bytes)) {
      add_chunk(plan, c10::ArrayRef<Matrix>(mats).slice(first, i - first), dtypes, op, planes, tile, blocks, total,
                cfg);
      first = i;
      sum = 0;
    }
    if (!end) sum += bytes[i];
  }
}

Plan reconstruct_plan(const Operands& x, const Settings& cfg) {
  Plan plan;
  if (x.size() == 0) return plan;
  check_devices(x);
  check_shapes(x);
  const std::vector<Group> groups = group_by_dtype(x);
  check_dims(x);
  plan.table.reserve(x.size() * 34 + 64);  // per matrix: a map row, two stage jobs, a GEMM row
  std::vector<Matrix> mats;
  for (const Group& g : groups) {
    mats.clear();
    for (int64_t i : g.index) {
      Matrix m = read(x, i);
      if (m.m > 0 && m.n > 0) mats.push_back(m);  // nothing to write otherwise
    }
    if (!mats.empty()) add_group(plan, mats, g.dtypes, cfg);
  }
  return plan;
}

// Boxed, so that the tensor lists are read where the dispatcher's stack holds them (Operands).
void reconstruct_plan_boxed(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  constexpr size_t kArgs = 12;
  auto arg = [&](size_t i) -> const c10::IValue& { return (*stack)[stack->size() - kArgs + i]; };
  const Operands x{{arg(0).toListRef(), arg(1).toListRef(), arg(2).toListRef(), arg(3).toListRef()}};
  TORCH_CHECK(x.lists[0].size() == x.size() && x.lists[1].size() == x.size() && x.lists[2].size() == x.size(),
              "svs._reconstruct: u, s, vh and out must have the same length");
  Settings cfg{0,
               {arg(5).toIntVector(), arg(6).toIntVector()},
               arg(7).toIntVector(),
               arg(8).toInt(),
               arg(9).toInt(),
               arg(10).toInt(),
               arg(11).toInt()};
  TORCH_CHECK(cfg.planes.size() == 8 && cfg.programs > 0 && cfg.stage_block_r > 0 && cfg.stage_block_c > 0,
              "svs._reconstruct_plan: planes must have 2 x 4 entries, programs and stage blocks must be positive");
  const double power = arg(4).toDouble();
  std::memcpy(&cfg.power_bits, &power, sizeof(power));  // scalars travel in the int64 tables
  auto [table, launches, relocs] = reconstruct_plan(x, cfg).tensors();
  torch::jit::drop(*stack, kArgs);
  torch::jit::push(*stack, std::move(table), std::move(launches), std::move(relocs));
}

int64_t gemm_config(at::IntArrayRef m, at::IntArrayRef n, at::IntArrayRef tiles, int64_t programs) {
  TORCH_CHECK(m.size() == n.size(), "svs._gemm_config: m and n must have the same length");
  return choose_tile(m.vec(), n.vec(), tiles, programs);
}

std::tuple<std::vector<std::string>, std::vector<std::string>, std::vector<std::string>, std::vector<int64_t>>
launch_layout() {
  return {{std::begin(kDtypeNames), std::end(kDtypeNames)},
          {std::begin(kKindNames), std::end(kKindNames)},
          {std::begin(kLayoutNames), std::end(kLayoutNames)},
          {kRecord, kMapRow, kStageRow, kGemmRow}};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(svs, m) {
  // Internal (svs_kernels/triton_ops/reconstruct.py): the launch plan of the Triton kernel of
  // _reconstruct. tiles32/tiles64: (block_m, block_n, block_k) of the GEMM config candidates per
  // operand dtype, largest first; planes[op][out]: workspace planes per factor for operand dtype
  // op (0 float32, 1 float64) and out dtype (float16, bfloat16, float32, float64). Returns the
  // int64 table (CPU; workspace pointers as byte offsets, to be relocated), the launch records
  // (L, 10) and the table indices to relocate, all on the CPU. Catch-all kernel: any device.
  m.def(
      "_reconstruct_plan(Tensor[] u, Tensor[] s, Tensor[] vh, Tensor[] out, float power, int[] tiles32, "
      "int[] tiles64, int[] planes, int programs, int stage_block_r, int stage_block_c, int workspace_bytes) "
      "-> (Tensor table, Tensor launches, Tensor relocs)",
      torch::CppFunction::makeFromBoxedFunction<&reconstruct_plan_boxed>());
  // Internal: the index of the GEMM config candidate (tiles as above) the shape rule picks for
  // matrices of sizes (m_i, n_i) on a grid of `programs` programs.
  m.def("_gemm_config(int[] m, int[] n, int[] tiles, int programs) -> int", &gemm_config);
  // Internal: the layout of _reconstruct_plan's output, by index: the dtypes (torch names), the
  // launch kinds, the stage layouts, and the widths in int64 fields of a launch record, a
  // sigma-map row, a staging job and a GEMM row.
  m.def(
      "_launch_layout() -> (str[] dtypes, str[] kinds, str[] layouts, int[] widths)", &launch_layout);
}

}  // namespace svs
