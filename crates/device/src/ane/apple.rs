//! The Objective-C half of the ANE device: every call into the private AppleNeuralEngine
//! framework, IOSurface and the system, and nothing else. What to call with is decided by the
//! plain-Rust modules beside this one ([`CompilePlan`]); the sequence is spec section 1.3.
//!
//! Ownership: factory methods return autoreleased objects, which `msg_send!` retains into
//! `Retained` values; everything a kernel keeps is owned by its [`AneKernel`] and released when
//! it drops, after the model is unloaded. Compiles and evals run inside autorelease pools so that
//! the temporary objects (option dictionaries, errors) do not pile up over millions of evals.

use super::budget::PROCESS_COMPILES;
use super::chip;
use super::failure::{eval_hints, step_failed, Step};
use super::model_dir::{ModelDirLease, ModelDirs};
use super::pacing::{is_transient_load_failure, CompileTurn, LoadRetry, PROCESS_COMPILER};
use super::plan::CompilePlan;
use super::surface::{check_reported_strides, ReportedSurface, SurfaceLayout};
use super::version::MacOsVersion;
use super::weights::{InnerValue, WeightsDictionary};
use super::{AneConfig, AneInfo};
use crate::clock::RealClock;
use crate::{DeviceError, Kernel, KernelExec};
use objc2::rc::{autoreleasepool, Retained};
use objc2::runtime::{AnyClass, AnyObject, Sel};
use objc2::{msg_send, sel};
use objc2_core_foundation::{CFDictionary, CFNumber, CFRetained, CFString};
use objc2_foundation::{
    NSArray, NSData, NSDictionary, NSError, NSNumber, NSString, NSTemporaryDirectory,
};
use objc2_io_surface::{
    kIOSurfaceAllocSize, kIOSurfaceBytesPerElement, kIOSurfaceBytesPerRow, kIOSurfaceHeight,
    kIOSurfacePixelFormat, kIOSurfaceWidth, IOSurfaceLockOptions, IOSurfaceRef,
};
use std::ffi::{CStr, CString};
use std::sync::{Arc, OnceLock};

const FRAMEWORK_PATH: &CStr =
    c"/System/Library/PrivateFrameworks/AppleNeuralEngine.framework/AppleNeuralEngine";

/// The framework's classes this device uses.
struct Classes {
    descriptor: &'static AnyClass,
    model: &'static AnyClass,
    request: &'static AnyClass,
    surface_object: &'static AnyClass,
}

/// The loaded framework and the process's model directories.
pub(super) struct Runtime {
    classes: Classes,
    dirs: Arc<ModelDirs>,
}

impl Runtime {
    /// Loads the framework and checks that every class and method the device calls exists.
    pub(super) fn open() -> Result<(Runtime, AneInfo), DeviceError> {
        if cfg!(not(target_arch = "aarch64")) {
            return Err(DeviceError::Unavailable(super::off_apple_silicon_reason()));
        }
        load_framework()?;
        let classes = Classes {
            descriptor: class(c"_ANEInMemoryModelDescriptor")?,
            model: class(c"_ANEInMemoryModel")?,
            request: class(c"_ANERequest")?,
            surface_object: class(c"_ANEIOSurfaceObject")?,
        };
        require_class_method(
            classes.descriptor,
            sel!(modelWithMILText:weights:optionsPlist:),
        )?;
        require_class_method(classes.model, sel!(inMemoryModelWithDescriptor:))?;
        for sel in [
            sel!(hexStringIdentifier),
            sel!(compileWithQoS:options:error:),
            sel!(loadWithQoS:options:error:),
            sel!(evaluateWithQoS:options:request:error:),
            sel!(unloadWithQoS:error:),
        ] {
            require_instance_method(classes.model, sel)?;
        }
        require_class_method(
            classes.request,
            sel!(requestWithInputs:inputIndices:outputs:outputIndices:weightsBuffer:perfStats:procedureIndex:),
        )?;
        require_class_method(classes.surface_object, sel!(objectWithIOSurface:))?;
        let runtime = Runtime {
            classes,
            dirs: process_model_dirs(),
        };
        Ok((runtime, probe_info()))
    }

    /// Compiles and loads a planned program, counting it against the process's budget.
    pub(super) fn compile(
        &self,
        plan: CompilePlan<'_>,
        config: &AneConfig,
    ) -> Result<Kernel, DeviceError> {
        // One compile and load at a time in the process, whatever the number of devices: every
        // measured setup compiled on one thread, and the compiler's state is per process.
        let mut turn = PROCESS_COMPILER.enter();
        PROCESS_COMPILES.claim(config.compile_budget)?;
        let exec = autoreleasepool(|_| AneKernel::compile(self, &plan, config.qos, &mut turn))?;
        drop(turn);
        Ok(Kernel::new(plan.signature, Box::new(exec)))
    }
}

/// The model directories of this process, under `NSTemporaryDirectory()` as the compiler
/// expects them. One registry for the process: every device shares the temp root.
fn process_model_dirs() -> Arc<ModelDirs> {
    static DIRS: OnceLock<Arc<ModelDirs>> = OnceLock::new();
    Arc::clone(DIRS.get_or_init(|| ModelDirs::new(NSTemporaryDirectory().to_string())))
}

/// `dlopen`s the framework once per process; its classes register with the runtime as it
/// loads. The handle is never closed: the classes stay in use for the life of the process.
fn load_framework() -> Result<(), DeviceError> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: a valid NUL-terminated path; dlopen has no other precondition.
            let handle = unsafe { libc::dlopen(FRAMEWORK_PATH.as_ptr(), libc::RTLD_NOW) };
            if handle.is_null() {
                Err(format!(
                    "cannot load {}: {}",
                    FRAMEWORK_PATH.to_string_lossy(),
                    dlerror_message()
                ))
            } else {
                Ok(())
            }
        })
        .clone()
        .map_err(DeviceError::Unavailable)
}

fn dlerror_message() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl call on
    // this thread; it is copied at once.
    let message = unsafe { libc::dlerror() };
    if message.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-null, NUL-terminated (see above).
        unsafe { CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }
}

fn class(name: &CStr) -> Result<&'static AnyClass, DeviceError> {
    AnyClass::get(name).ok_or_else(|| {
        DeviceError::Unavailable(format!(
            "AppleNeuralEngine.framework loaded, but it has no class {}: the private API \
             changed in this macOS version",
            name.to_string_lossy()
        ))
    })
}

fn require_class_method(class: &AnyClass, sel: Sel) -> Result<(), DeviceError> {
    match class.class_method(sel) {
        Some(_) => Ok(()),
        None => Err(missing_method(class, '+', sel)),
    }
}

fn require_instance_method(class: &AnyClass, sel: Sel) -> Result<(), DeviceError> {
    match class.instance_method(sel) {
        Some(_) => Ok(()),
        None => Err(missing_method(class, '-', sel)),
    }
}

fn missing_method(class: &AnyClass, kind: char, sel: Sel) -> DeviceError {
    DeviceError::Unavailable(format!(
        "AppleNeuralEngine.framework: {kind}[{} {sel}] is missing: the private API changed in \
         this macOS version",
        class.name().to_string_lossy()
    ))
}

/// The CPU brand string and the macOS version, as the system reports them.
pub(crate) fn host_facts() -> (Option<String>, Option<MacOsVersion>) {
    (
        sysctl_string(c"machdep.cpu.brand_string"),
        sysctl_string(c"kern.osproductversion").and_then(|v| v.parse::<MacOsVersion>().ok()),
    )
}

/// What this machine is: its chip, the ANE's subtype and the macOS version. Each is `None`
/// when the system does not say.
fn probe_info() -> AneInfo {
    let chip_brand = sysctl_string(c"machdep.cpu.brand_string");
    AneInfo {
        chip: chip_brand.as_deref().and_then(chip::identify),
        chip_brand,
        ane_subtype: ane_subtype(),
        macos: sysctl_string(c"kern.osproductversion").and_then(|v| v.parse::<MacOsVersion>().ok()),
    }
}

/// `[_ANEDeviceInfo aneSubType]`, e.g. `h16`; only probes ever used it, so it is optional.
fn ane_subtype() -> Option<String> {
    let class = AnyClass::get(c"_ANEDeviceInfo")?;
    class.class_method(sel!(aneSubType))?;
    autoreleasepool(|_| {
        // SAFETY: the class method exists (checked above) and returns an object or nil.
        let subtype: Option<Retained<AnyObject>> = unsafe { msg_send![class, aneSubType] };
        subtype.map(|s| describe(&s))
    })
}

/// `[object description]`: the text of an NSString, or any object's description.
fn describe(object: &AnyObject) -> String {
    // SAFETY: every Objective-C object answers `description` with an NSString.
    let text: Retained<NSString> = unsafe { msg_send![object, description] };
    text.to_string()
}

/// A string-valued sysctl, without its trailing NUL.
fn sysctl_string(name: &CStr) -> Option<String> {
    let mut len: libc::size_t = 0;
    // SAFETY: a valid name; a null buffer asks for the length only.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            std::ptr::null_mut(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 || len == 0 {
        return None;
    }
    let mut buffer = vec![0u8; len];
    // SAFETY: `buffer` has room for `len` bytes, the length just reported.
    let rc = unsafe {
        libc::sysctlbyname(
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return None;
    }
    buffer.truncate(len);
    let text = CString::from_vec_with_nul(buffer).ok()?;
    text.into_string().ok()
}

/// One entry's inner dictionary: `{"data": NSData, "offset": NSNumber}`.
type InnerDictionary = NSDictionary<NSString, AnyObject>;

/// The weights dictionary of spec 1.4: key → `{"data": NSData(whole file), "offset": @0}`,
/// the inner keys inserted in the order the plan gives. Empty (never nil) without weights.
fn weights_dictionary(
    weights: &WeightsDictionary<'_>,
) -> Result<Retained<NSDictionary<NSString, InnerDictionary>>, DeviceError> {
    let keys: Vec<Retained<NSString>> = weights
        .entries
        .iter()
        .map(|e| NSString::from_str(e.key))
        .collect();
    let mut values: Vec<Retained<InnerDictionary>> = Vec::new();
    for entry in &weights.entries {
        let (inner_keys, inner_values): (Vec<Retained<NSString>>, Vec<Retained<AnyObject>>) = entry
            .inner()
            .into_iter()
            .map(|(key, value)| {
                let object: Retained<AnyObject> = match value {
                    InnerValue::Data(bytes) => NSData::with_bytes(bytes).into(),
                    InnerValue::Offset(offset) => NSNumber::new_u64(offset).into(),
                };
                (NSString::from_str(key.name()), object)
            })
            .unzip();
        let inner_key_refs: Vec<&NSString> = inner_keys.iter().map(|k| &**k).collect();
        let inner = NSDictionary::from_retained_objects(&inner_key_refs, &inner_values);
        // The framework calls `bytes` on the first value it enumerates, and an Objective-C
        // exception would abort the process: refuse instead, should enumeration not follow
        // insertion.
        let data_first = inner
            .allValues()
            .firstObject()
            .is_some_and(|first| first.downcast_ref::<NSData>().is_some());
        if !data_first {
            return Err(step_failed(
                Step::Descriptor,
                Some(&format!(
                    "the weights entry of `{}` does not enumerate its data first, and the \
                     framework would raise an exception on it",
                    entry.key
                )),
                &[],
            ));
        }
        values.push(inner);
    }
    let key_refs: Vec<&NSString> = keys.iter().map(|k| &**k).collect();
    Ok(NSDictionary::from_retained_objects(&key_refs, &values))
}

/// The `options:` argument of compile, load, eval: always an empty dictionary.
fn no_options() -> Retained<NSDictionary<NSString, AnyObject>> {
    NSDictionary::new()
}

/// The description of an NSError, as the original prints it (`err.description`: domain, code
/// and user info).
fn error_text(error: &NSError) -> String {
    describe(error)
}

/// One I/O surface and its layout.
struct Surface {
    surface: CFRetained<IOSurfaceRef>,
    layout: SurfaceLayout,
}

impl Surface {
    /// `IOSurfaceCreate` with the six keys of spec 1.5: a single row of `alloc_bytes` bytes.
    fn new(layout: SurfaceLayout) -> Result<Surface, DeviceError> {
        let fail = |why: &str| {
            step_failed(
                Step::Surface,
                Some(&format!(
                    "`{}` ({} bytes): {why}",
                    layout.name, layout.alloc_bytes
                )),
                &[],
            )
        };
        let bytes = i64::try_from(layout.alloc_bytes).map_err(|_| fail("too large"))?;
        let number = |v: i64| CFNumber::new_i64(v);
        let (size, one, zero) = (number(bytes), number(1), number(0));
        // SAFETY: the kIOSurface* keys are immutable CFStrings exported by IOSurface.framework.
        let keys: [&CFString; 6] = unsafe {
            [
                kIOSurfaceWidth,
                kIOSurfaceHeight,
                kIOSurfaceBytesPerElement,
                kIOSurfaceBytesPerRow,
                kIOSurfaceAllocSize,
                kIOSurfacePixelFormat,
            ]
        };
        let values: [&CFNumber; 6] = [&size, &one, &one, &size, &size, &zero];
        let properties = CFDictionary::<CFString, CFNumber>::from_slices(&keys, &values);
        // SAFETY: a dictionary of CFString keys and CFNumber values, as IOSurfaceCreate takes.
        let surface = unsafe { IOSurfaceRef::new(properties.as_opaque()) }
            .ok_or_else(|| fail("IOSurfaceCreate returned NULL"))?;
        if surface.alloc_size() < layout.data_bytes {
            return Err(fail("the surface is smaller than asked for"));
        }
        Ok(Surface { surface, layout })
    }

    /// Locks the surface, gives its tensor bytes to `f`, unlocks.
    fn with_bytes<R>(
        &self,
        options: IOSurfaceLockOptions,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, DeviceError> {
        // SAFETY: a live surface; a null seed pointer is allowed.
        let rc = unsafe { self.surface.lock(options, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(DeviceError::EvalFailed(format!(
                "IOSurfaceLock of `{}` failed (kern_return {rc})",
                self.layout.name
            )));
        }
        let base = self.surface.base_address().as_ptr().cast::<u8>();
        // SAFETY: the surface is locked and at least `data_bytes` long (checked at creation);
        // nothing else in this process touches it while the kernel is borrowed mutably.
        let bytes = unsafe { std::slice::from_raw_parts_mut(base, self.layout.data_bytes) };
        let result = f(bytes);
        // SAFETY: unlocks the lock taken above, with the same options.
        unsafe { self.surface.unlock(options, std::ptr::null_mut()) };
        Ok(result)
    }

    fn write(&self, values: &[f32]) -> Result<(), DeviceError> {
        self.with_bytes(IOSurfaceLockOptions::empty(), |bytes| {
            self.layout.encode(values, bytes)
        })
    }

    fn read(&self, values: &mut [f32]) -> Result<(), DeviceError> {
        self.with_bytes(IOSurfaceLockOptions::ReadOnly, |bytes| {
            self.layout.decode(bytes, values)
        })
    }
}

/// A compiled, loaded program: its model, the surfaces and the request that binds them, and
/// the temp directory it uses.
struct AneKernel {
    /// Unloaded first (in a turn of its model directory, see `Drop`).
    model: LoadedModel,
    binding: Binding,
    /// The empty `options:` dictionary, made once rather than per eval.
    options: Retained<NSDictionary<NSString, AnyObject>>,
    /// Dropped last: the directory goes only after the model is unloaded and released.
    dir: ModelDirLease,
}

// SAFETY: the Objective-C objects are used by one thread at a time (eval takes `&mut self`);
// the framework is used from several threads by every setup measured (compile on one, eval on
// another), and surfaces are plain shared memory guarded by their lock.
unsafe impl Send for AneKernel {}

impl AneKernel {
    /// Steps 2–12 of spec 1.3, inside the caller's autorelease pool. Whatever fails, what was
    /// made so far is released (and unloaded, once loaded) on the way out.
    fn compile(
        runtime: &Runtime,
        plan: &CompilePlan<'_>,
        qos: u32,
        turn: &mut CompileTurn<'_, RealClock>,
    ) -> Result<AneKernel, DeviceError> {
        let (model, identifier) = in_memory_model(&runtime.classes, plan)?;
        // The files are written now and stay until the lease is taken: no unload of an
        // identical kernel deletes them during the compile and load. Whatever fails in
        // between, the model is dropped (unloaded) while this turn still holds.
        let compiling =
            runtime
                .dirs
                .begin_compile(&identifier, plan.mil_text.as_bytes(), &plan.weights)?;
        let options = no_options();
        let model = LoadedModel::compile_and_load(model, qos, &options, &plan.hints, turn)?;
        check_strides(&model.model, plan)?;
        let binding = Binding::new(&runtime.classes, plan)?;
        Ok(AneKernel {
            model,
            binding,
            options,
            dir: compiling.into_lease(),
        })
    }
}

impl Drop for AneKernel {
    fn drop(&mut self) {
        // The framework's unload deletes the model directory: not while an identical kernel
        // compiles from it.
        let model = &mut self.model;
        self.dir.unload_with(|| model.unload());
    }
}

/// Refuses a loaded model that lays out a surface other than densely, by the strides it
/// reports; a model that reports none is taken as dense.
fn check_strides(model: &AnyObject, plan: &CompilePlan<'_>) -> Result<(), DeviceError> {
    let (inputs, outputs) = reported_surfaces(model);
    check_reported_strides("input", &plan.inputs, &inputs)?;
    check_reported_strides("output", &plan.outputs, &outputs)
}

/// `[model modelAttributes]`, `NetworkStatusList[0]`, its `LiveInputList` and
/// `LiveOutputList`: empty lists wherever an attribute is missing or not of the expected
/// class, since none of it is documented.
fn reported_surfaces(model: &AnyObject) -> (Vec<ReportedSurface>, Vec<ReportedSurface>) {
    if !model.class().responds_to(sel!(modelAttributes)) {
        return (Vec::new(), Vec::new());
    }
    // SAFETY: the model answers `modelAttributes` (checked above), an object or nil.
    let attributes: Option<Retained<AnyObject>> = unsafe { msg_send![model, modelAttributes] };
    let status = attributes
        .as_deref()
        .and_then(|a| value_for_key(a, "NetworkStatusList"))
        .and_then(|list| list.downcast_ref::<NSArray>()?.firstObject());
    let list = |key: &str| -> Vec<ReportedSurface> {
        let Some(list) = status.as_deref().and_then(|s| value_for_key(s, key)) else {
            return Vec::new();
        };
        let Some(list) = list.downcast_ref::<NSArray>() else {
            return Vec::new();
        };
        (0..list.count())
            .map(|i| reported_surface(&list.objectAtIndex(i)))
            .collect()
    };
    (list("LiveInputList"), list("LiveOutputList"))
}

/// One entry of a live I/O list; a field the entry lacks, or holds of another class, is `None`.
fn reported_surface(entry: &AnyObject) -> ReportedSurface {
    let number = |key: &str| {
        value_for_key(entry, key)?
            .downcast_ref::<NSNumber>()
            .map(|n| n.as_u64())
    };
    ReportedSurface {
        name: value_for_key(entry, "Name")
            .and_then(|n| n.downcast_ref::<NSString>().map(|s| s.to_string())),
        row_stride: number("RowStride"),
        plane_stride: number("PlaneStride"),
    }
}

/// `dictionary[key]`, when `dictionary` is an NSDictionary.
fn value_for_key(dictionary: &AnyObject, key: &str) -> Option<Retained<AnyObject>> {
    dictionary
        .downcast_ref::<NSDictionary>()?
        .objectForKey(&NSString::from_str(key))
}

/// Steps 2–5: the descriptor from the MIL text and the weights, the in-memory model, and its
/// `hexStringIdentifier`.
fn in_memory_model(
    classes: &Classes,
    plan: &CompilePlan<'_>,
) -> Result<(Retained<AnyObject>, String), DeviceError> {
    let mil = NSData::with_bytes(plan.mil_text.as_bytes());
    let weights = weights_dictionary(&plan.weights)?;
    let no_plist: Option<&AnyObject> = None;
    // SAFETY: the method exists (checked at open) and takes three objects.
    let descriptor: Option<Retained<AnyObject>> = unsafe {
        msg_send![classes.descriptor, modelWithMILText: &*mil, weights: &*weights, optionsPlist: no_plist]
    };
    let descriptor = descriptor.ok_or_else(|| step_failed(Step::Descriptor, None, &plan.hints))?;
    // SAFETY: as above, one object argument.
    let model: Option<Retained<AnyObject>> =
        unsafe { msg_send![classes.model, inMemoryModelWithDescriptor: &*descriptor] };
    let model = model.ok_or_else(|| step_failed(Step::Model, None, &plan.hints))?;
    // SAFETY: an instance method without arguments returning an NSString (checked at open).
    let identifier: Option<Retained<NSString>> = unsafe { msg_send![&*model, hexStringIdentifier] };
    let identifier = identifier.ok_or_else(|| {
        step_failed(
            Step::Model,
            Some("the model has no hexStringIdentifier"),
            &[],
        )
    })?;
    Ok((model, identifier.to_string()))
}

/// A model that compiled and loaded; it unloads itself when dropped, so that no failure path
/// leaves it loaded.
struct LoadedModel {
    model: Retained<AnyObject>,
    qos: u32,
    loaded: bool,
}

impl LoadedModel {
    /// Steps 7–8: compile, then load, the load retried with back-off while the ANE is short
    /// of resources. A failed compile makes the next one wait (`turn`).
    fn compile_and_load(
        model: Retained<AnyObject>,
        qos: u32,
        options: &NSDictionary<NSString, AnyObject>,
        hints: &[String],
        turn: &mut CompileTurn<'_, RealClock>,
    ) -> Result<LoadedModel, DeviceError> {
        // SAFETY: (unsigned int, id, NSError**) -> BOOL, checked at open.
        let compiled: Result<(), Retained<NSError>> =
            unsafe { msg_send![&*model, compileWithQoS: qos, options: options, error: _] };
        match compiled {
            Ok(()) => turn.compile_succeeded(),
            Err(e) => {
                turn.compile_failed();
                return Err(step_failed(Step::Compile, Some(&error_text(&e)), hints));
            }
        }
        let load = || -> Result<(), Retained<NSError>> {
            // SAFETY: (unsigned int, id, NSError**) -> BOOL, checked at open.
            unsafe { msg_send![&*model, loadWithQoS: qos, options: options, error: _] }
        };
        LoadRetry::REFERENCE
            .run(
                PROCESS_COMPILER.clock(),
                |e: &Retained<NSError>| is_transient_load_failure(&error_text(e)),
                load,
            )
            .map_err(|gave_up| {
                let detail = format!(
                    "{} ({} attempts)",
                    error_text(&gave_up.error),
                    gave_up.attempts
                );
                step_failed(Step::Load, Some(&detail), hints)
            })?;
        Ok(LoadedModel {
            model,
            qos,
            loaded: true,
        })
    }

    /// Step 14.1, once.
    fn unload(&mut self) {
        if !std::mem::take(&mut self.loaded) {
            return;
        }
        autoreleasepool(|_| {
            // SAFETY: (unsigned int, NSError**) -> BOOL, checked at open. A failed unload
            // cannot be reported (it runs as the kernel drops); the model is released either
            // way.
            let _: Result<(), Retained<NSError>> =
                unsafe { msg_send![&*self.model, unloadWithQoS: self.qos, error: _] };
        });
    }

    /// Step 13.2: one synchronous evaluation; the outputs are ready when it returns.
    fn evaluate(
        &self,
        options: &NSDictionary<NSString, AnyObject>,
        request: &AnyObject,
    ) -> Result<(), Retained<NSError>> {
        // SAFETY: (unsigned int, id, id, NSError**) -> BOOL, checked at open; the caller keeps
        // the request and its surfaces alive.
        unsafe {
            msg_send![
                &*self.model,
                evaluateWithQoS: self.qos,
                options: options,
                request: request,
                error: _
            ]
        }
    }
}

impl Drop for LoadedModel {
    fn drop(&mut self) {
        self.unload();
    }
}

/// Steps 10–12: one surface per input and output, wrapped, and the request that binds them,
/// built once and reused for every eval. Surfaces are in the order the ANE binds them (by
/// name); callers' buffers come in declaration order, mapped by `*_of_declared`.
struct Binding {
    request: Retained<AnyObject>,
    /// The surface wrappers, held as the request's arrays hold them (spec 1.8).
    _surface_objects: [Retained<NSArray<AnyObject>>; 2],
    inputs: Vec<Surface>,
    outputs: Vec<Surface>,
    input_of_declared: Vec<usize>,
    output_of_declared: Vec<usize>,
}

impl Binding {
    fn new(classes: &Classes, plan: &CompilePlan<'_>) -> Result<Binding, DeviceError> {
        let inputs = surfaces(&plan.inputs.layouts)?;
        let outputs = surfaces(&plan.outputs.layouts)?;
        let input_objects = surface_objects(classes, &inputs)?;
        let output_objects = surface_objects(classes, &outputs)?;
        let request = build_request(
            classes,
            &input_objects,
            inputs.len(),
            &output_objects,
            outputs.len(),
        )?;
        Ok(Binding {
            request,
            _surface_objects: [input_objects, output_objects],
            inputs,
            outputs,
            input_of_declared: plan.inputs.binding_of_declared.clone(),
            output_of_declared: plan.outputs.binding_of_declared.clone(),
        })
    }
}

fn surfaces(layouts: &[SurfaceLayout]) -> Result<Vec<Surface>, DeviceError> {
    layouts.iter().cloned().map(Surface::new).collect()
}

/// `[_ANEIOSurfaceObject objectWithIOSurface:]` for each surface, as an NSArray in order.
fn surface_objects(
    classes: &Classes,
    surfaces: &[Surface],
) -> Result<Retained<NSArray<AnyObject>>, DeviceError> {
    let mut objects = Vec::with_capacity(surfaces.len());
    for s in surfaces {
        // SAFETY: takes an IOSurfaceRef (checked at open); the surface outlives the wrapper,
        // both being owned by the kernel.
        let object: Option<Retained<AnyObject>> =
            unsafe { msg_send![classes.surface_object, objectWithIOSurface: &*s.surface] };
        objects.push(object.ok_or_else(|| {
            step_failed(
                Step::Request,
                Some(&format!("no _ANEIOSurfaceObject for `{}`", s.layout.name)),
                &[],
            )
        })?);
    }
    Ok(NSArray::from_retained_slice(&objects))
}

/// The request of spec 1.6, built once per kernel: indices 0..n-1, no weights buffer, no
/// perf stats, procedure index `@0` (an object, not an integer).
fn build_request(
    classes: &Classes,
    inputs: &NSArray<AnyObject>,
    input_count: usize,
    outputs: &NSArray<AnyObject>,
    output_count: usize,
) -> Result<Retained<AnyObject>, DeviceError> {
    let indices = |n: usize| -> Retained<NSArray<NSNumber>> {
        let numbers: Vec<Retained<NSNumber>> = (0..n).map(NSNumber::new_usize).collect();
        NSArray::from_retained_slice(&numbers)
    };
    let (input_indices, output_indices) = (indices(input_count), indices(output_count));
    let procedure = NSNumber::new_i32(0);
    let none: Option<&AnyObject> = None;
    // SAFETY: seven object arguments (checked at open); nil is accepted for the weights buffer
    // and the perf stats, as in every production use.
    let request: Option<Retained<AnyObject>> = unsafe {
        msg_send![
            classes.request,
            requestWithInputs: inputs,
            inputIndices: &*input_indices,
            outputs: outputs,
            outputIndices: &*output_indices,
            weightsBuffer: none,
            perfStats: none,
            procedureIndex: &*procedure
        ]
    };
    request.ok_or_else(|| step_failed(Step::Request, Some("_ANERequest returned nil"), &[]))
}

impl KernelExec for AneKernel {
    /// Writes the inputs, evaluates, reads the outputs.
    fn eval(&mut self, inputs: &[&[f32]], outputs: &mut [&mut [f32]]) -> Result<(), DeviceError> {
        let binding = &self.binding;
        for (values, &bound) in inputs.iter().zip(&binding.input_of_declared) {
            binding.inputs[bound].write(values)?;
        }
        autoreleasepool(|_| {
            self.model
                .evaluate(&self.options, &binding.request)
                .map_err(|e| {
                    let detail = error_text(&e);
                    let hints = eval_hints(&detail, binding.inputs.len());
                    step_failed(Step::Eval, Some(&detail), &hints)
                })
        })?;
        for (values, &bound) in outputs.iter_mut().zip(&binding.output_of_declared) {
            binding.outputs[bound].read(values)?;
        }
        Ok(())
    }
}
