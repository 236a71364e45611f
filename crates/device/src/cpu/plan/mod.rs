//! Compiling a checked MIL function into a CPU plan: constants resolved and laid out,
//! elementwise chains fused, views (reshape, contiguous slices) turned into aliases, and every
//! remaining value given a place in one arena whose slots are reused once a value is dead.
//!
//! Lowering happens in two stages. [`PlanTemplate::lower`] does everything that depends on
//! the program alone: steps, fusion, arena layout, which products get packed weights.
//! [`PlanTemplate::bind`] reads the weight files into the constants and packs them. A program
//! compiled again with new weights (every update of a training run) only needs the second.
//!
//! The work is split by stage: [`lower`] turns each op into steps, [`passes`] turns those
//! steps into a template (dead steps dropped, products to pack chosen, arena laid out),
//! [`bind`] reads the weights into a runnable [`Plan`], with [`consts`] saying where each
//! constant's values come from.

mod bind;
mod consts;
mod lower;
mod passes;

use super::steps::{PackedGemm, Step, ValueId};
use bind::ReadConst;
use consts::ConstSource;
use std::sync::{Arc, Mutex};

/// Where a value's elements live when the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Place {
    /// Fused away: never materialised.
    Unused,
    /// `arena[offset..offset + len]`.
    Arena(usize),
    /// `consts[index][offset..]`.
    Const(usize, usize),
    /// Read in place from the caller's input buffer `index`, from `offset`.
    Input(usize, usize),
    /// Written in place into the caller's output buffer `index`, from `offset`.
    Output(usize, usize),
}

/// A kernel's plan: its lowered program, shared by every kernel bound from the same template,
/// and what binding added, the constants and packed products. Binding a template for each
/// compile then allocates a handful of buffers, and dropping a kernel frees as few, where a
/// copy of the steps would be a few thousand small allocations per training set, which the
/// training thread would free again at every swap (docs/benchmarks.md).
#[derive(Debug)]
pub struct Plan {
    pub lowered: Arc<LoweredPlan>,
    /// Per constant, its values (empty where only packed products read it).
    pub consts: Vec<Arc<Vec<f32>>>,
    /// Per step, its packed left operand (products with a constant one, where packed).
    pub packed: Vec<Option<PackedGemm>>,
}

/// The steps of a lowered program and where their values live: everything but the weights.
#[derive(Debug)]
pub struct LoweredPlan {
    pub steps: Vec<Step>,
    /// Round each step's output to fp16 after it runs (for steps that do not round themselves).
    pub round_after: Vec<bool>,
    pub places: Vec<Place>,
    pub lens: Vec<usize>,
    pub arena_len: usize,
    /// Working space shared by the steps (they run one at a time), taken with the arena.
    pub scratch_len: usize,
    /// Function inputs that are copied into the arena (to be rounded to fp16 on the way in):
    /// input index and value.
    pub copied_inputs: Vec<(usize, ValueId)>,
    /// Function outputs that are not written in place: output index and value to copy out.
    pub copied_outputs: Vec<(usize, ValueId)>,
    /// Whether any step is large enough to split across threads.
    pub parallel: bool,
}

/// Values are born as one of these; aliases share their root's storage.
#[derive(Clone, Debug)]
enum Storage {
    Arena,
    Const(usize),
    /// A function input read where the caller keeps it.
    Input(usize),
    Alias {
        root: ValueId,
        offset: usize,
    },
}

#[derive(Clone, Debug)]
struct Value {
    shape: Vec<usize>,
    storage: Storage,
    /// fp16 mode and an fp16-typed value: rounded at its op boundary.
    round: bool,
}

/// A lowered function waiting for its weights (see the module documentation).
#[derive(Debug)]
pub struct PlanTemplate {
    /// The plan without constant data: no `consts`, no packed products.
    plan: Arc<LoweredPlan>,
    values: Vec<Value>,
    sources: Vec<ConstSource>,
    /// Steps (products) whose constant left operand is packed at bind time.
    packed_steps: Vec<usize>,
    /// Constants that only packed products read: their raw copy is dropped once packed.
    packed_only: Vec<usize>,
    /// Per constant, what the last bind read from a weight file, with that file.
    read_before: Mutex<Vec<Option<ReadConst>>>,
}

/// The value whose storage `id` lives in, and `id`'s offset into it. Views of views are
/// recorded against the first root, so one step resolves any alias.
fn root(values: &[Value], id: ValueId) -> (ValueId, usize) {
    match values[id].storage {
        Storage::Alias { root, offset } => (root, offset),
        _ => (id, 0),
    }
}
