//! The passes that turn the steps lowered from a function into a [`PlanTemplate`], run in
//! order by [`finish`]: each takes what the ones before it produced and hands on its own.

use super::consts::ConstSource;
use super::{root, LoweredPlan, Place, PlanTemplate, Storage, Value};
use crate::cpu::matmul::{MatLayout, PARALLEL_MIN_MACS};
use crate::cpu::packed;
use crate::cpu::shape::{MAX_OPERANDS, MAX_RANK};
use crate::cpu::steps::{GemmStep, Step, ValueId};
use crate::DeviceError;
use std::sync::{Arc, Mutex};

/// The lowering passes, in order, from the steps and values the ops lowered to. `inputs` are
/// the function inputs copied into the arena (input index and value), `outputs` the value of
/// each function output.
pub(super) fn finish(
    mut steps: Vec<Step>,
    values: Vec<Value>,
    sources: Vec<ConstSource>,
    inputs: Vec<(usize, ValueId)>,
    outputs: Vec<ValueId>,
) -> Result<PlanTemplate, DeviceError> {
    collapse_chains(&mut steps);
    drop_dead_steps(&mut steps, &values, &outputs);
    check_loop_nests(&steps)?;
    let packed_steps = packed_products(&steps, &values);
    let live = live_ranges(&steps, &values, &packed_steps, &inputs, &outputs);
    let outputs_placed = place_outputs(&values, &live, &outputs);
    let arena = assign_arena(&values, &live, &outputs_placed.in_place);
    let places = places(&values, &outputs_placed.in_place, &arena.offsets);
    let scratch_len = scratch_len(&steps, &packed_steps);
    let packed_only =
        packed_only_constants(&steps, &values, sources.len(), &packed_steps, &outputs);
    let round_after = round_after(&steps, &values);
    let lens = values.iter().map(|v| v.shape.iter().product()).collect();
    let parallel = runs_parallel(&steps);
    Ok(PlanTemplate {
        plan: Arc::new(LoweredPlan {
            steps,
            round_after,
            places,
            lens,
            arena_len: arena.len,
            scratch_len,
            copied_inputs: inputs,
            copied_outputs: outputs_placed.copied,
            parallel,
        }),
        values,
        read_before: Mutex::new(sources.iter().map(|_| None).collect()),
        sources,
        packed_steps,
        packed_only,
    })
}

/// Collapses the loop nest of every elementwise chain. Fusion extends a chain until its last
/// op, so only now are all its operands, and the dimensions they all walk alike, known.
fn collapse_chains(steps: &mut [Step]) {
    for step in steps {
        if let Step::Ew(e) = step {
            e.finish();
        }
    }
}

/// Drops the steps whose result nothing reads (a transpose that every product reads through
/// its source instead), from the last step back, so that what only dropped steps read goes
/// too.
fn drop_dead_steps(steps: &mut Vec<Step>, values: &[Value], outputs: &[ValueId]) {
    let mut needed = vec![false; values.len()];
    for &id in outputs {
        needed[root(values, id).0] = true;
    }
    let mut keep = vec![true; steps.len()];
    for (i, step) in steps.iter().enumerate().rev() {
        if !needed[root(values, step.writes()).0] {
            keep[i] = false;
            continue;
        }
        for id in step.reads() {
            needed[root(values, id).0] = true;
        }
    }
    let mut keep = keep.into_iter();
    steps.retain(|_| keep.next().unwrap_or(true));
}

/// Refuses a step whose loop nest is still too deep, or walks too many operands, once
/// collapsed: the kernels walk loop nests in fixed-size arrays, so that running a step
/// allocates nothing.
fn check_loop_nests(steps: &[Step]) -> Result<(), DeviceError> {
    for step in steps {
        let too_big = match step {
            Step::Ew(e) => e.shape.len() > MAX_RANK + 1 || e.strides.len() > MAX_OPERANDS,
            Step::Reduce(r) => r.shape.len() > MAX_RANK + 1,
            Step::Copy(c) => c.pieces.iter().any(|p| p.shape.len() > MAX_RANK + 1),
            _ => false,
        };
        if too_big {
            return Err(DeviceError::CompileFailed(format!(
                "a loop nest has more than {MAX_RANK} dimensions after collapsing"
            )));
        }
    }
    Ok(())
}

/// The steps (products) whose constant left operand is packed at bind time (see
/// [`packs_constant`]), in step order.
fn packed_products(steps: &[Step], values: &[Value]) -> Vec<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, Step::Gemm(g) if packs_constant(g, values)))
        .map(|(i, _)| i)
        .collect()
}

/// What step `i` reads once its weights are bound: a packed product reads its packed copy,
/// not the constant.
fn bound_reads(i: usize, step: &Step, packed_steps: &[usize]) -> Vec<ValueId> {
    let mut r = step.reads();
    if let (Step::Gemm(g), true) = (step, packed_steps.contains(&i)) {
        r.retain(|&id| id != g.a);
    }
    r
}

/// Live ranges of arena roots, per value: steps are numbered 1..=n, copied inputs are born at 0,
/// and function outputs live past the last step.
struct LiveRanges {
    /// The first step that writes the value (0 for a copied input); `usize::MAX` if none does.
    born: Vec<usize>,
    /// The last step that reads the value (n + 1 for a function output); 0 if none does.
    dies: Vec<usize>,
}

/// When each arena root is first written and last read, which is what lets
/// [`assign_arena`] reuse a dead value's slot.
fn live_ranges(
    steps: &[Step],
    values: &[Value],
    packed_steps: &[usize],
    inputs: &[(usize, ValueId)],
    outputs: &[ValueId],
) -> LiveRanges {
    let n = steps.len();
    let mut born = vec![usize::MAX; values.len()];
    let mut dies = vec![0usize; values.len()];
    for &(_, id) in inputs {
        born[id] = 0;
    }
    for (i, step) in steps.iter().enumerate() {
        let (r, _) = root(values, step.writes());
        born[r] = born[r].min(i + 1);
        for read in bound_reads(i, step, packed_steps) {
            let (r, _) = root(values, read);
            dies[r] = dies[r].max(i + 1);
        }
    }
    for &id in outputs {
        let (r, _) = root(values, id);
        dies[r] = n + 1;
    }
    LiveRanges { born, dies }
}

/// How each function output reaches the caller's buffer.
struct OutputPlaces {
    /// Per value, the output whose buffer the value (an arena root) is computed into.
    in_place: Vec<Option<usize>>,
    /// Outputs copied out after the last step: output index and value.
    copied: Vec<(usize, ValueId)>,
}

/// Places the outputs. One computed into its own arena root is written straight into the
/// caller's buffer, which saves copying it out; any other output (an input, a constant, a
/// view, a repeat) is copied at the end.
fn place_outputs(values: &[Value], live: &LiveRanges, outputs: &[ValueId]) -> OutputPlaces {
    let born = &live.born;
    let mut in_place: Vec<Option<usize>> = vec![None; values.len()];
    let mut copied_outputs = Vec::new();
    for (j, &id) in outputs.iter().enumerate() {
        let (r, off) = root(values, id);
        let whole = off == 0 && values[r].shape == values[id].shape;
        let computed =
            matches!(values[r].storage, Storage::Arena) && born[r] != usize::MAX && born[r] > 0;
        if whole && computed && in_place[r].is_none() {
            in_place[r] = Some(j);
        } else {
            copied_outputs.push((j, id));
        }
    }
    OutputPlaces {
        in_place,
        copied: copied_outputs,
    }
}

/// Where the arena roots live in the arena.
struct ArenaLayout {
    /// Per value, its slot's offset; `usize::MAX` for a value with no slot.
    offsets: Vec<usize>,
    /// The arena's length in elements.
    len: usize,
}

/// Gives every arena root that is written (by a step, or as a copied input) and is not
/// computed into an output a slot: in order of birth, at the lowest offset where it fits between the slots of the
/// values still live, so a dead value's slot is reused and the arena stays small.
fn assign_arena(values: &[Value], live: &LiveRanges, in_place: &[Option<usize>]) -> ArenaLayout {
    let (born, dies) = (&live.born, &live.dies);
    let mut offsets = vec![usize::MAX; values.len()];
    let mut live: Vec<(usize, usize, usize)> = Vec::new(); // (offset, len, dies)
    let mut arena_len = 0;
    let mut order: Vec<ValueId> = (0..values.len())
        .filter(|&id| {
            matches!(values[id].storage, Storage::Arena)
                && born[id] != usize::MAX
                && in_place[id].is_none()
        })
        .collect();
    order.sort_by_key(|&id| born[id]);
    for id in order {
        live.retain(|&(_, _, d)| d >= born[id]);
        let len = align(values[id].shape.iter().product::<usize>().max(1));
        live.sort_unstable();
        let mut at = 0;
        for &(o, l, _) in &live {
            if o >= at + len {
                break;
            }
            at = at.max(o + l);
        }
        live.push((at, len, dies[id].max(born[id])));
        offsets[id] = at;
        arena_len = arena_len.max(at + len);
    }
    ArenaLayout {
        offsets,
        len: arena_len,
    }
}

/// Where each value lives when the kernel runs, from its root's storage and slot.
fn places(values: &[Value], in_place: &[Option<usize>], offsets: &[usize]) -> Vec<Place> {
    (0..values.len())
        .map(|id| {
            let (r, off) = root(values, id);
            match (&values[r].storage, in_place[r]) {
                (Storage::Const(c), _) => Place::Const(*c, off),
                (Storage::Input(i), _) => Place::Input(*i, off),
                (Storage::Arena, Some(j)) => Place::Output(j, off),
                (Storage::Arena, None) if offsets[r] != usize::MAX => {
                    Place::Arena(offsets[r] + off)
                }
                _ => Place::Unused,
            }
        })
        .collect()
}

/// The working space the steps need, as much as the neediest: they run one at a time, so
/// they share it.
fn scratch_len(steps: &[Step], packed_steps: &[usize]) -> usize {
    let packed_scratch = packed_steps.iter().map(|&i| match &steps[i] {
        Step::Gemm(g) => packed::scratch_len(g.k, g.n),
        _ => 0,
    });
    let softmax_scratch = steps.iter().map(|s| match s {
        Step::Softmax(s) => s.scratch_len(),
        _ => 0,
    });
    packed_scratch.chain(softmax_scratch).max().unwrap_or(0)
}

/// The constants that only packed products read, sorted: they are held packed alone, since
/// the raw copy would double their memory for nothing.
fn packed_only_constants(
    steps: &[Step],
    values: &[Value],
    const_count: usize,
    packed_steps: &[usize],
    outputs: &[ValueId],
) -> Vec<usize> {
    let const_of = |id: ValueId| match values[root(values, id).0].storage {
        Storage::Const(c) => Some(c),
        _ => None,
    };
    let mut still_read = vec![false; const_count];
    let all_reads = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| bound_reads(i, s, packed_steps));
    for id in all_reads.chain(outputs.iter().copied()) {
        if let Some(c) = const_of(id) {
            still_read[c] = true;
        }
    }
    let mut packed_only: Vec<usize> = packed_steps
        .iter()
        .filter_map(|&i| match &steps[i] {
            Step::Gemm(g) => const_of(g.a).filter(|&c| !still_read[c]),
            _ => None,
        })
        .collect();
    packed_only.sort_unstable();
    packed_only.dedup();
    packed_only
}

/// Per step, whether the kernel rounds its output to fp16 after it runs: where the output
/// rounds and the step does not round it itself.
fn round_after(steps: &[Step], values: &[Value]) -> Vec<bool> {
    steps
        .iter()
        .map(|s| !s.rounds_itself() && values[s.writes()].round)
        .collect()
}

/// Whether any step is large enough to be worth splitting across threads.
fn runs_parallel(steps: &[Step]) -> bool {
    steps
        .iter()
        .any(|s| matches!(s, Step::Gemm(g) if g.m * g.n * g.k >= PARALLEL_MIN_MACS))
}

/// Products narrower than this keep the general path: the packed microkernel computes
/// [`packed::NR`] columns at a time, so it would mostly compute padding.
const PACKED_MIN_N: usize = 8;

/// Whether a product's left operand is a constant the packed kernel can take, so that the
/// weights are laid out once at compile time instead of on every eval.
fn packs_constant(g: &GemmStep, values: &[Value]) -> bool {
    if !packed::available() || g.lc.cs != 1 || g.n < PACKED_MIN_N || g.k == 0 || g.m == 0 {
        return false;
    }
    let (r, base) = root(values, g.a);
    let Storage::Const(_) = values[r].storage else {
        return false;
    };
    let len: usize = values[r].shape.iter().product();
    g.batches.iter().all(|&[oa, ..]| {
        let la = MatLayout {
            offset: g.la.offset + base + oa,
            ..g.la
        };
        la.extent(g.m, g.k) <= len
    })
}

/// Arena slots start on 64-byte boundaries.
fn align(len: usize) -> usize {
    len.div_ceil(16) * 16
}
