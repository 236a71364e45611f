//! A run's timeline across processes: a resumed run (every budget restart is one) continues
//! the trace it finds.

/// A trace-event JSON: `new`'s spans after `earlier`'s (shifted to start where the earlier
/// ones end, each process's clock starting at zero), or `new` alone when there is no earlier
/// trace, or it is not one of ours.
pub fn continue_trace(earlier: Option<&[u8]>, new: &str) -> Result<String, serde_json::Error> {
    let Some(earlier) = earlier else {
        return Ok(new.to_string());
    };
    let Ok(mut earlier) = serde_json::from_slice::<serde_json::Value>(earlier) else {
        // Not a trace (or not one of ours): start a new one rather than fail the run.
        return Ok(new.to_string());
    };
    let mut new: serde_json::Value = serde_json::from_str(new)?;
    let Some(events) = earlier["traceEvents"].as_array_mut() else {
        return Ok(new.to_string());
    };
    let end = events
        .iter()
        .filter(|e| e["ph"] == "X")
        .filter_map(|e| Some(e["ts"].as_f64()? + e["dur"].as_f64()?))
        .fold(0.0, f64::max);
    let spans = new["traceEvents"].as_array_mut().map(std::mem::take);
    for mut e in spans.into_iter().flatten() {
        if e["ph"] != "X" {
            continue;
        }
        if let Some(ts) = e["ts"].as_f64() {
            e["ts"] = (ts + end).into();
        }
        events.push(e);
    }
    serde_json::to_string(&earlier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn new_spans_follow_the_earlier_ones() {
        let earlier = json!({"traceEvents": [
            {"name": "thread_name", "ph": "M", "tid": 1},
            {"name": "eval", "ph": "X", "tid": 1, "ts": 10.0, "dur": 5.0},
            {"name": "eval", "ph": "X", "tid": 1, "ts": 100.0, "dur": 20.0},
        ]})
        .to_string();
        let new = json!({"traceEvents": [
            {"name": "thread_name", "ph": "M", "tid": 1},
            {"name": "compile", "ph": "X", "tid": 2, "ts": 0.0, "dur": 7.0},
            {"name": "eval", "ph": "X", "tid": 1, "ts": 8.0, "dur": 1.0},
        ]})
        .to_string();
        let joined: Value =
            serde_json::from_str(&continue_trace(Some(earlier.as_bytes()), &new).unwrap()).unwrap();
        let events = joined["traceEvents"].as_array().unwrap();
        // The earlier three, then the new spans (not their metadata), shifted by 120 µs.
        assert_eq!(events.len(), 5);
        assert_eq!(events[3]["name"], "compile");
        assert_eq!(events[3]["ts"], 120.0);
        assert_eq!(events[4]["ts"], 128.0);
        // Nothing to continue, or something that is not a trace: the new trace alone.
        assert_eq!(continue_trace(None, &new).unwrap(), new);
        assert_eq!(continue_trace(Some(b"not json"), &new).unwrap(), new);
    }
}
