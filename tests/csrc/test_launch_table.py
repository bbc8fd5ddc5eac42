"""svs::_reconstruct_plan and svs::_gemm_config (csrc/launch_table.cpp): the launch tables of the
Triton reconstruction, built from the operands' metadata, on CPU tensors (no triton needed).

The reference below builds the same plan in plain Python, one matrix at a time, from the row
layouts documented in svs_kernels/triton_ops/{sigma_map,stage,gemm}.py and the launch records of
launch_table.cpp, with the dtype indices, kinds, stage layouts and widths that svs::_launch_layout
gives (the one statement of them); the tests compare the operator's output with it exactly.
"""
import struct

import pytest
import torch

import svs_kernels  # noqa: F401  (registers torch.ops.svs)

_DTYPES, _KINDS, _LAYOUTS, _WIDTHS = torch.ops.svs._launch_layout()
DTYPES = [getattr(torch, name) for name in _DTYPES]  # the plan's dtype indices
CHUNK, STAGE, GEMM = (_KINDS.index(k) for k in ("chunk", "stage", "gemm"))
ROW_MAJOR, COL_MAJOR, GENERAL = (_LAYOUTS.index(k) for k in ("row_major", "col_major", "general"))
RECORD, MAP_ROW, STAGE_ROW, GEMM_ROW = _WIDTHS
TILES32 = [128, 128, 32, 64, 128, 32, 64, 64, 32, 32, 64, 32]  # gemm.CONFIGS' tiles
TILES64 = [64, 64, 16, 32, 64, 16]
PLANES = [1, 1, 2, 2, 1, 1, 1, 1]  # [operand float32/float64][out dtype]: SPLIT for float32/64 outputs


def plan(u, s, vh, out, power=0.5, tiles32=TILES32, tiles64=TILES64, planes=PLANES, programs=4, block_r=32,
         block_c=64, cap=1 << 30):
    table, launches, relocs = torch.ops.svs._reconstruct_plan(u, s, vh, out, power, tiles32, tiles64, planes,
                                                              programs, block_r, block_c, cap)
    return table.tolist(), launches.tolist(), relocs.tolist()


# ---------------------------------------------------------------------------------------------
# the reference


def cdiv(a, b):
    return -(-a // b)


def ref_rule(m, n, tiles, programs):
    """Index of the shape rule's pick among tiles ((bm, bn, bk) triples, largest first)."""
    cands = [t for t in range(len(tiles)) if tiles[t][0] <= max(1 << max(0, max(m) - 1).bit_length(), 32)
             and tiles[t][1] <= max(1 << max(0, max(n) - 1).bit_length(), 64)]
    if not cands:
        return len(tiles) - 1
    for t in cands:
        if sum(cdiv(a, tiles[t][0]) * cdiv(b, tiles[t][1]) for a, b in zip(m, n)) >= programs:
            return t
    return cands[-1]


def ref_layout(s0, s1, rows, cols):
    return ROW_MAJOR if s1 == 1 or cols == 1 else COL_MAJOR if s0 == 1 or rows == 1 else GENERAL


def ref_plan(u, s, vh, out, power=0.5, tiles32=TILES32, tiles64=TILES64, planes=PLANES, programs=4, block_r=32,
             block_c=64, cap=1 << 30):
    table, launches, relocs = [], [], []
    groups = {}
    for i, ts in enumerate(zip(u, s, vh, out)):
        groups.setdefault(tuple(DTYPES.index(t.dtype) for t in ts), []).append(i)
    for key, idx in groups.items():
        idx = [i for i in idx if out[i].shape[0] > 0 and out[i].shape[1] > 0]
        if not idx:
            continue
        f32, f64 = DTYPES.index(torch.float32), DTYPES.index(torch.float64)
        op = f64 if f64 in (key[0], key[2]) else f32
        es = DTYPES[op].itemsize
        flat = tiles64 if op == f64 else tiles32
        tiles = [tuple(flat[j:j + 3]) for j in range(0, len(flat), 3)]
        t = ref_rule([out[i].shape[0] for i in idx], [out[i].shape[1] for i in idx], tiles, programs)
        bm, bn, bk = tiles[t]
        pl = planes[(op - f32) * len(DTYPES) + key[3]]
        mnk = {i: (u[i].shape[0], vh[i].shape[1], u[i].shape[1]) for i in idx}
        pad = {i: (cdiv(m, bm) * bm, cdiv(n, bn) * bn, cdiv(k, bk) * bk) for i, (m, n, k) in mnk.items()}
        need = {i: pl * (mp * kp + kp * np_) * es for i, (mp, np_, kp) in pad.items()}
        total = sum(need.values())
        chunks, acc = [[]], 0
        for i in idx:
            if total > cap and acc and acc + need[i] > cap:
                chunks.append([])
                acc = 0
            chunks[-1].append(i)
            acc += need[i]
        for ch in chunks:
            a, b, f, at = {}, {}, {}, 0
            for i in ch:
                a[i], at = at, at + pl * pad[i][0] * pad[i][2]
            for i in ch:
                b[i], at = at, at + pl * pad[i][2] * pad[i][1]
            fs_at = at
            for i in ch:
                f[i], at = at, at + mnk[i][2]
            start = len(table)
            record = [CHUNK, start, len(ch), None, at + 1, op, key[1], fs_at, None, total]
            launches.append(record)
            table += [struct.unpack("<q", struct.pack("<d", power))[0], 0, 0, 0]
            for i in ch:
                table += [s[i].data_ptr(), mnk[i][2], s[i].stride(0), f[i] - fs_at]
            for is_u in (True, False):
                for lay in (ROW_MAJOR, COL_MAJOR, GENERAL):
                    at0, rows = len(table), 0
                    tiles_rc = 0
                    for i in ch:
                        m, n, k = mnk[i]
                        mp, np_, kp = pad[i]
                        x = u[i] if is_u else vh[i]
                        r, c = (m, k) if is_u else (k, n)
                        if ref_layout(x.stride(0), x.stride(1), r, c) != lay:
                            continue
                        rp, cp = (mp, kp) if is_u else (kp, np_)
                        row = len(table)
                        if is_u:
                            table += [x.data_ptr(), f[i] * es, a[i] * es]
                            relocs += [row + 1, row + 2]
                        else:
                            table += [x.data_ptr(), 0, b[i] * es]
                            relocs += [row + 2]
                        table += [r, c, x.stride(0), x.stride(1), rp, cp, rp * cp]
                        rows += 1
                        tiles_rc += cdiv(rp, block_r) * cdiv(cp, block_c)
                    if rows:
                        launches.append([STAGE, at0, rows, key[0 if is_u else 2], op, lay, key[3],
                                         max(1, min(programs * 8, tiles_rc))] + [0] * (RECORD - 8))
            o_es = DTYPES[key[3]].itemsize
            for aligned in (True, False):
                at0, mn = len(table), []
                for i in ch:
                    m, n, k = mnk[i]
                    mp, np_, kp = pad[i]
                    o = out[i]
                    is_al = (o.stride(1) == 1 and o.data_ptr() % 16 == 0 and o.stride(0) * o_es % 16 == 0
                             and m % bm == 0 and n % bn == 0)
                    if is_al != aligned:
                        continue
                    row = len(table)
                    table += [a[i] * es, b[i] * es, o.data_ptr(), m, n, kp, o.stride(0), o.stride(1), mp * kp, kp * np_]
                    relocs += [row, row + 1]
                    mn.append((m, n))
                if mn:
                    tiles_mn = sum(cdiv(m, bm) * cdiv(n, bn) for m, n in mn)
                    launches.append([GEMM, at0, len(mn), t, op, key[3], int(aligned), max(1, min(programs, tiles_mn))]
                                    + [0] * (RECORD - 8))
            record[3], record[8] = len(table), len(relocs)
    return table, launches, relocs


# ---------------------------------------------------------------------------------------------
# problems


def strided(rows, cols, layout, dtype, gen):
    """A (rows, cols) tensor that is row-major (1), column-major (2) or strided both ways (0)."""
    if layout == 1:
        return torch.randn(rows, cols, generator=gen).to(dtype)
    if layout == 2:
        return torch.randn(cols, rows, generator=gen).to(dtype).t()
    return torch.randn(rows * 2, cols * 3, generator=gen).to(dtype)[::2, ::3]


def mixed_problem(seed):
    """Shapes, strides and dtypes of every kind the plan distinguishes: each layout, size-1
    dimensions, k = 0, empty outputs, aligned and unaligned outputs (offset views, transposed,
    odd row strides), tile multiples, and six dtype combinations."""
    gen = torch.Generator().manual_seed(seed)
    f16, bf16, f32, f64 = DTYPES
    specs = [  # (m, n, k, u layout, vh layout, u/vh dtype, s dtype, out dtype, out kind)
        (64, 128, 64, 2, 1, f32, f32, f32, "buffer"),
        (37, 50, 20, 1, 2, f32, f32, f32, "buffer"),
        (128, 64, 64, 0, 0, f32, f64, f32, "offset"),
        (1, 70, 1, 0, 0, f32, f32, f32, "transposed"),
        (33, 1, 1, 2, 2, f32, f32, f32, "buffer"),
        (5, 7, 0, 1, 1, f32, f32, f32, "buffer"),
        (0, 9, 3, 1, 1, f32, f32, f32, "buffer"),
        (6, 0, 3, 1, 1, f32, f32, f32, "buffer"),
        (64, 64, 64, 2, 1, f32, f32, bf16, "buffer"),
        (45, 90, 45, 1, 1, f32, f32, f16, "odd"),
        (64, 64, 17, 2, 1, f64, f64, f64, "buffer"),
        (20, 30, 20, 0, 2, f64, f32, f32, "buffer"),
        (96, 64, 64, 2, 1, f32, f32, f32, "buffer"),
    ]
    u, s, vh, out = [], [], [], []
    for m, n, k, lu, lv, fdt, sdt, odt, kind in specs:
        u.append(strided(m, k, lu, fdt, gen))
        s.append(torch.rand(2 * k, generator=gen).to(sdt)[::2] if k % 2 else torch.rand(k, generator=gen).to(sdt))
        vh.append(strided(k, n, lv, fdt, gen))
        if kind == "buffer":
            out.append(torch.empty(m, n, dtype=odt))
        elif kind == "offset":
            out.append(torch.empty(m * n + 1, dtype=odt)[1:].view(m, n))
        elif kind == "transposed":
            out.append(torch.empty(n, m, dtype=odt).t())
        else:
            out.append(torch.empty(m, n + 3, dtype=odt)[:, :n])
    return u, s, vh, out


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("programs", [1, 4, 132])
def test_plan_matches_reference(seed, programs):
    u, s, vh, out = mixed_problem(seed)
    got = plan(u, s, vh, out, programs=programs)
    assert got == ref_plan(u, s, vh, out, programs=programs)
    _, launches, _ = got
    assert [r[0] for r in launches].count(CHUNK) == 6, "one chunk per dtype combination with a matrix to write"
    assert {r[5] for r in launches if r[0] == STAGE} == {ROW_MAJOR, COL_MAJOR, GENERAL}, "every layout"
    assert {r[6] for r in launches if r[0] == GEMM} == {0, 1}, "aligned and remainder launches"


@pytest.mark.parametrize("cap", [1, 100_000, 300_000])
def test_plan_chunks_under_the_workspace_cap(cap):
    """A cap below the group's workspace splits it into chunks in call order (a matrix larger than
    the cap alone); each chunk's table is self-contained (map header, stage and GEMM rows)."""
    u, s, vh, out = mixed_problem(2)
    got = plan(u, s, vh, out, cap=cap, block_r=16, block_c=32, planes=[2, 2, 2, 2, 1, 1, 1, 1])
    assert got == ref_plan(u, s, vh, out, cap=cap, block_r=16, block_c=32, planes=[2, 2, 2, 2, 1, 1, 1, 1])
    chunks = [r for r in got[1] if r[0] == CHUNK]
    assert len(chunks) > 6
    assert all(a[3] == b[1] for a, b in zip(chunks, chunks[1:])), "chunk tables back to back"
    if cap == 1:  # one matrix per chunk, except the k = 0 one, which needs no workspace
        assert len(chunks) == 10 and sum(r[2] for r in chunks) == 11


def test_plan_interpreter_config_and_power():
    """One candidate tile (the interpreter's) is always the pick; the header holds power's bits."""
    u, s, vh, out = mixed_problem(3)
    one = [32, 32, 16]
    got = plan(u, s, vh, out, power=-1.25, tiles32=one, tiles64=one)
    assert got == ref_plan(u, s, vh, out, power=-1.25, tiles32=one, tiles64=one)
    table, launches, _ = got
    assert {r[3] for r in launches if r[0] == GEMM} == {0}
    assert table[0] == struct.unpack("<q", struct.pack("<d", -1.25))[0]


def test_plan_relocations_are_the_workspace_cells():
    """Relocated cells: f(s) and destination of each U job, destination of each Vh job, A and B of
    each GEMM row, all inside their chunk's workspace; nothing else."""
    u, s, vh, out = mixed_problem(4)
    table, launches, relocs = plan(u, s, vh, out)
    moved = set(relocs)
    assert len(moved) == len(relocs)
    want = set()
    for r in launches:
        if r[0] == CHUNK:
            ws_bytes, matrices = r[4] * DTYPES[r[5]].itemsize, r[2]
            fs_cells = set()
        else:
            width = STAGE_ROW if r[0] == STAGE else GEMM_ROW
            rows = [r[1] + width * j for j in range(r[2])]
            want |= {row + c for row in rows for c in ((2,) if r[0] == STAGE else (0, 1))}
            if r[0] == STAGE:
                fs_cells |= {row + 1 for row in rows if row + 1 in moved}
                assert len(fs_cells) <= matrices
            assert all(0 <= table[c] < ws_bytes for c in moved & set(row + c for row in rows for c in range(width)))
    assert len(moved - want) == sum(r[2] for r in launches if r[0] == CHUNK), "one f(s) pointer per U job"
    assert want <= moved


def test_plan_empty_and_dropped():
    assert plan([], [], [], []) == ([], [], [])
    z = torch.empty(0, 3)
    assert plan([z], [torch.empty(3)], [torch.empty(3, 4)], [torch.empty(0, 4)]) == ([], [], [])


def test_gemm_config_rule():
    """svs::_gemm_config (gemm.choose_config) is the plan's rule: against the reference for random
    size sets; the biggest tile for big matrices, the smallest fitting one for tiny ones."""
    gen = torch.Generator().manual_seed(5)
    tiles = [tuple(TILES32[j:j + 3]) for j in range(0, len(TILES32), 3)]
    for _ in range(50):
        g = int(torch.randint(1, 6, (1,), generator=gen))
        m = torch.randint(1, 3000, (g,), generator=gen).tolist()
        n = torch.randint(1, 3000, (g,), generator=gen).tolist()
        for programs in (1, 16, 132):
            assert torch.ops.svs._gemm_config(m, n, TILES32, programs) == ref_rule(m, n, tiles, programs), (m, n)
    assert torch.ops.svs._gemm_config([4096] * 8, [4096] * 8, TILES32, 132) == 0
    assert torch.ops.svs._gemm_config([16], [40], TILES32, 132) == 3
    assert torch.ops.svs._gemm_config([4096], [4096], [32, 32, 16], 132) == 0


def test_plan_errors():
    a, s, b, o = torch.ones(3, 2), torch.ones(2), torch.ones(2, 4), torch.empty(3, 4)
    with pytest.raises(RuntimeError, match="same length"):
        plan([a], [s], [b], [o, o])
    with pytest.raises(RuntimeError, match=r"vh\[0\] is on meta but out\[0\] is on cpu"):
        plan([a], [s], [torch.ones(2, 4, device="meta")], [o])
    with pytest.raises(RuntimeError, match=r"matrix 1: expected u 2-D, s 1-D, vh 2-D, out 2-D, got shapes "
                                           r"\(3, 2\), \(2, 1\), \(2, 4\), \(3, 4\)"):
        plan([a, a], [s, s.view(2, 1)], [b, b], [o, o])
    with pytest.raises(RuntimeError, match=r"matrix 0: shapes u \(3, 2\), s \(2,\), vh \(2, 4\), out \(4, 3\) "
                                           r"do not fit"):
        plan([a], [s], [b], [torch.empty(4, 3)])
    with pytest.raises(RuntimeError, match="do not fit"):
        plan([a], [torch.ones(3)], [b], [o])
    with pytest.raises(RuntimeError, match=r"out\[1\] has dtype Int; expected a float dtype"):
        plan([a, a], [s, s], [b, b], [o, torch.empty(3, 4, dtype=torch.int32)])
    big = torch.empty(1).expand(2**31, 1)
    with pytest.raises(RuntimeError, match="dimension >= 2"):
        plan([big], [torch.ones(1)], [torch.ones(1, 1)], [torch.empty(1).expand(2**31, 1)])
    m, k = 2**16, 2**15 + 1  # 2^31 + 2^16 elements once k is padded to the tile
    with pytest.raises(RuntimeError, match="2\\^31 or more elements after padding"):
        plan([torch.empty(1).expand(m, k)], [torch.empty(1).expand(k)], [torch.empty(1).expand(k, 1)],
             [torch.empty(1).expand(m, 1)])
    with pytest.raises(RuntimeError, match="planes"):
        plan([a], [s], [b], [o], planes=[1])


def test_launch_layout():
    """svs::_launch_layout, which svs_kernels/triton_ops/_layout.py reads: the four float dtypes,
    distinct kinds and layouts, and widths that tile the plan's output: (L, RECORD) launch records,
    and per chunk the map header and rows, then its stage and GEMM launches' rows, back to back."""
    assert len(DTYPES) == 4 and set(DTYPES) == {torch.float16, torch.bfloat16, torch.float32, torch.float64}
    assert sorted(_KINDS) == ["chunk", "gemm", "stage"] and sorted(_LAYOUTS) == ["col_major", "general", "row_major"]
    u, s, vh, out = mixed_problem(6)
    table, launches, _ = torch.ops.svs._reconstruct_plan(u, s, vh, out, 0.5, TILES32, TILES64, PLANES, 4, 32, 64,
                                                         1 << 30)
    assert launches.shape[1] == RECORD
    at = 0
    for r in launches.tolist():
        if r[0] == CHUNK:
            assert r[1] == at
            at += (1 + r[2]) * MAP_ROW
        else:
            assert r[1] == at, f"{_KINDS[r[0]]} launch at {r[1]}, expected {at}"
            at += r[2] * (STAGE_ROW if r[0] == STAGE else GEMM_ROW)
    assert at == table.numel()
