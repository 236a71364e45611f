//! A Chrome trace-event timeline (opens in Perfetto or chrome://tracing): one track for device
//! evals, one for background compiles, one for the compiles the training thread waits for, and
//! one for the training steps on the host, so the overlap of background compiles and
//! foreground evals can be seen.

use crate::clock::Clock;
use crate::decorate::Decorator;
use crate::{Device, DeviceError, Kernel};
use anetrain_mil::Program;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The tracks of the timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    DeviceEval = 1,
    /// Compiles on the training thread (start-up, recompile): training waits for them.
    Compile = 2,
    Host = 3,
    /// Compiles on a thread marked with [`mark_background_thread`].
    BackgroundCompile = 4,
}

impl Track {
    const ALL: [Track; 4] = [
        Track::DeviceEval,
        Track::BackgroundCompile,
        Track::Compile,
        Track::Host,
    ];
}

thread_local! {
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one that compiles in the background (the double buffer's):
/// its compiles go on the background-compile track.
pub fn mark_background_thread() {
    BACKGROUND.with(|b| b.set(true));
}

fn on_background_thread() -> bool {
    BACKGROUND.with(|b| b.get())
}

impl Track {
    fn name(self) -> &'static str {
        match self {
            Track::DeviceEval => "device evals",
            Track::Compile => "compiles training waits for",
            Track::Host => "host: training steps, optimizer, validation",
            Track::BackgroundCompile => "background compiles",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    pub track: Track,
    pub name: String,
    pub start: Duration,
    pub duration: Duration,
}

/// Collects spans from any thread.
#[derive(Clone, Default)]
pub struct Tracer {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Tracer {
    pub fn new() -> Tracer {
        Tracer::default()
    }

    pub fn record(&self, track: Track, name: &str, start: Duration, end: Duration) {
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Span {
                track,
                name: name.to_string(),
                start,
                duration: end.saturating_sub(start),
            });
    }

    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The trace as Chrome trace-event JSON.
    pub fn to_json(&self) -> String {
        let mut events: Vec<String> = Track::ALL
            .iter()
            .map(|t| {
                format!(
                    r#"{{"name":"thread_name","ph":"M","pid":1,"tid":{},"args":{{"name":"{}"}}}}"#,
                    *t as u8,
                    t.name()
                )
            })
            .collect();
        for s in self.spans() {
            events.push(format!(
                r#"{{"name":{},"ph":"X","pid":1,"tid":{},"ts":{:.3},"dur":{:.3}}}"#,
                json_string(&s.name),
                s.track as u8,
                s.start.as_secs_f64() * 1e6,
                s.duration.as_secs_f64() * 1e6
            ));
        }
        format!("{{\"traceEvents\":[\n{}\n]}}\n", events.join(",\n"))
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Records every compile and eval of the wrapped device on the timeline.
pub struct Traced<D> {
    inner: D,
    tracer: Tracer,
    clock: Arc<dyn Clock>,
}

impl<D: Device> Traced<D> {
    pub fn new(inner: D, tracer: Tracer, clock: Arc<dyn Clock>) -> Self {
        Traced {
            inner,
            tracer,
            clock,
        }
    }
}

impl<D: Device> Decorator for Traced<D> {
    fn wrapped(&self) -> &dyn Device {
        &self.inner
    }

    /// Records the compile on the compile track of the thread it ran on.
    fn around_compile(
        &self,
        _program: &Program,
        compile: impl FnOnce() -> Result<Kernel, DeviceError>,
    ) -> Result<Kernel, DeviceError> {
        let start = self.clock.now();
        let result = compile();
        let track = if on_background_thread() {
            Track::BackgroundCompile
        } else {
            Track::Compile
        };
        self.tracer
            .record(track, "compile", start, self.clock.now());
        result
    }

    fn around_eval(
        &self,
        kernel: &mut Kernel,
        outputs: &mut [&mut [f32]],
        eval: impl FnOnce(&mut Kernel, &mut [&mut [f32]]) -> Result<(), DeviceError>,
    ) -> Result<(), DeviceError> {
        let start = self.clock.now();
        let result = eval(kernel, outputs);
        self.tracer
            .record(Track::DeviceEval, "eval", start, self.clock.now());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_metadata_and_spans_in_microseconds() {
        let t = Tracer::new();
        t.record(
            Track::Compile,
            "set \"3\"",
            Duration::from_micros(1500),
            Duration::from_micros(4000),
        );
        let json = t.to_json();
        assert!(json.contains(
            r#""name":"thread_name","ph":"M","pid":1,"tid":2,"args":{"name":"compiles training waits for"}"#
        ));
        assert!(
            json.contains(
                r#"{"name":"set \"3\"","ph":"X","pid":1,"tid":2,"ts":1500.000,"dur":2500.000}"#
            ),
            "{json}"
        );
    }

    /// Compiles on a thread marked as background go on their own track; the others on the
    /// track of the compiles training waits for.
    #[test]
    fn compiles_go_on_the_track_of_their_thread() {
        use crate::clock::RealClock;
        use crate::{CpuDevice, NumericMode};
        let tracer = Tracer::new();
        let device = Traced::new(
            CpuDevice::new(NumericMode::Fp32),
            tracer.clone(),
            Arc::new(RealClock::new()),
        );
        let program = anetrain_mil::examples::dynamic_matmul(4, 4, 8);
        let weights = anetrain_mil::blob::WeightFiles::default();
        let prepared = device.prepare(&program);
        device.compile(&program, &weights).unwrap();
        device.compile_prepared(&prepared, &weights).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                mark_background_thread();
                device.compile(&program, &weights).unwrap();
                device.compile_prepared(&prepared, &weights).unwrap();
            });
        });
        let tracks: Vec<Track> = tracer.spans().iter().map(|s| s.track).collect();
        use Track::{BackgroundCompile, Compile};
        assert_eq!(
            tracks,
            [Compile, Compile, BackgroundCompile, BackgroundCompile]
        );
        assert!(tracer
            .to_json()
            .contains(r#""tid":4,"args":{"name":"background compiles"}"#));
    }
}
