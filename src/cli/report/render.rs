//! `report.md`: the report as tables to paste into an issue.

use super::{FieldReport, Part, PartStatus, TrainSummary};
use serde_json::Value;
use std::fmt::Write as _;

/// The Markdown summary of a report; every figure in it is one of `report.json`.
pub fn render_markdown(r: &FieldReport) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# anetrain field report\n");
    let _ = writeln!(
        md,
        "anetrain {} · {} · {:.0} s{}\n",
        r.anetrain,
        utc_date_time(r.created_unix),
        r.seconds,
        if r.settings.quick { " · --quick" } else { "" }
    );
    machine(&mut md, r);
    parity(&mut md, r);
    probe(&mut md, r);
    peak(&mut md, r);
    training(&mut md, r);
    parts(&mut md, r);
    md
}

fn machine(md: &mut String, r: &FieldReport) {
    let m = &r.machine;
    let unknown = || "unknown".to_string();
    let _ = writeln!(md, "## Machine\n\n| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| OS | {} {} ({}) |",
        m.os,
        m.arch,
        m.os_version.clone().unwrap_or_else(unknown)
    );
    let _ = writeln!(
        md,
        "| CPU | {}, {} cores |",
        m.cpu.clone().unwrap_or_else(unknown),
        m.cores
    );
    let a = &r.ane;
    if a.available {
        let _ = writeln!(md, "| ANE | {} |", a.name.clone().unwrap_or_else(unknown));
        let chip = a
            .chip
            .clone()
            .unwrap_or_else(|| "not in anetrain's table".into());
        let _ = writeln!(md, "| chip | {chip} |");
        if let Some(t) = a.rated_peak_tflops {
            let _ = writeln!(md, "| rated peak | {t:.1} TFLOPS fp16 |");
        }
        if let Some(b) = a.compile_budget {
            let _ = writeln!(md, "| compile budget | {b} per process |");
        }
    } else {
        let why = a.reason.clone().unwrap_or_else(unknown);
        let _ = writeln!(md, "| ANE | unavailable: {} |", cell(&why));
    }
    let _ = writeln!(md, "| simulated chip | {} |\n", r.settings.simulate);
}

/// The parts of one kind, in the report's order.
fn of_kind<'a>(r: &'a FieldReport, kind: &'a str) -> impl Iterator<Item = &'a Part> {
    r.parts.iter().filter(move |p| p.kind == kind)
}

fn parity(md: &mut String, r: &FieldReport) {
    let _ = writeln!(md, "## Kernel parity\n");
    for part in of_kind(r, "parity") {
        let Some(rows) = part.result.as_ref().and_then(|v| v["results"].as_array()) else {
            let _ = writeln!(md, "No results: {}.\n", part.describe_status());
            continue;
        };
        let mut targets: Vec<&str> = Vec::new();
        let mut cases: Vec<&str> = Vec::new();
        for row in rows {
            let (t, c) = (text(&row["target"]), text(&row["case"]));
            if !targets.contains(&t) {
                targets.push(t);
            }
            if !cases.contains(&c) {
                cases.push(c);
            }
        }
        let _ = writeln!(
            md,
            "Each cell: the outcome and the worst element's error as a share of its tolerance \
             (the CPU device against a naive f64 reference; another device against the CPU's \
             fp16 result).\n"
        );
        let _ = writeln!(md, "| case | {} |", targets.join(" | "));
        let _ = writeln!(md, "|---|{}", "---|".repeat(targets.len()));
        for case in &cases {
            let cells: Vec<String> = targets
                .iter()
                .map(|t| {
                    rows.iter()
                        .find(|row| text(&row["case"]) == *case && text(&row["target"]) == *t)
                        .map_or_else(|| "—".into(), parity_cell)
                })
                .collect();
            let _ = writeln!(md, "| {} | {} |", cell(case), cells.join(" | "));
        }
        let _ = writeln!(md);
        for row in rows.iter().filter(|row| text(&row["outcome"]) != "pass") {
            if let Some(reason) = row["reason"].as_str() {
                let _ = writeln!(
                    md,
                    "- {} on {}: {}",
                    text(&row["case"]),
                    text(&row["target"]),
                    cell(reason)
                );
            }
        }
        let _ = writeln!(md);
    }
}

fn parity_cell(row: &Value) -> String {
    let outcome = text(&row["outcome"]);
    let share = row["worst"]["share_of_tolerance"].as_f64();
    match (outcome, share) {
        ("pass", Some(s)) => format!("pass ({s:.2})"),
        ("fail", Some(s)) => format!(
            "**FAIL** ({s:.2}; {} of {})",
            row["beyond_tolerance"], row["elements"]
        ),
        ("fail", None) => format!(
            "**FAIL** (NaN; {} of {})",
            row["beyond_tolerance"], row["elements"]
        ),
        ("error", _) => "**ERROR**".into(),
        (other, _) => other.into(),
    }
}

fn probe(md: &mut String, r: &FieldReport) {
    let _ = writeln!(
        md,
        "## Probe\n\n| device | clock | compile ms | eval ms | compile : eval | compile and eval in parallel | kernels loaded | ping-pong overhead |\n|---|---|---|---|---|---|---|---|"
    );
    for part in of_kind(r, "probe") {
        let Some(v) = &part.result else {
            let _ = writeln!(md, "| {} | {} |||||||", part.device, part.describe_status());
            continue;
        };
        let s = &v["summary"];
        let parallel = match s["parallel_compile_and_eval"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "undetermined",
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {parallel} | {} | {} % |",
            part.device,
            text(&v["clock"]),
            num(&s["compile"]["value"], 4),
            num(&s["eval"]["value"], 4),
            num(&s["compile_to_eval"]["value"], 1),
            num(&s["kernels_loaded_at_once"]["value"], 0),
            num(&s["ping_pong_overhead"]["value"], 1),
        );
    }
    let _ = writeln!(md);
}

fn peak(md: &mut String, r: &FieldReport) {
    let _ = writeln!(
        md,
        "## Peak sweep\n\nThe best row of each sweep.\n\n| device | clock | row | TFLOPS | % of peak | peak |\n|---|---|---|---|---|---|"
    );
    for part in of_kind(r, "peak") {
        let Some(v) = &part.result else {
            let _ = writeln!(md, "| {} | {} |||||", part.device, part.describe_status());
            continue;
        };
        let rows = v["rows"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let best = rows.iter().max_by(|a, b| {
            let t = |r: &Value| {
                r["throughput"]["value"]
                    .as_f64()
                    .unwrap_or(f64::NEG_INFINITY)
            };
            t(a).total_cmp(&t(b))
        });
        let peak = match (
            v["peak"]["source"].as_str(),
            v["peak"]["flops"]["value"].as_f64(),
        ) {
            (Some(source), Some(gflops)) => format!("{:.3} TFLOPS {source}", gflops / 1e3),
            (Some(source), None) => source.to_string(),
            _ => "unknown".into(),
        };
        match best {
            Some(best) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {peak} |",
                    part.device,
                    text(&v["clock"]),
                    text(&best["config"]),
                    num(&best["throughput"]["value"], 4),
                    num(&best["percent_of_peak"]["value"], 1),
                );
            }
            None => {
                let _ = writeln!(
                    md,
                    "| {} | {} | no rows |||{peak} |",
                    part.device,
                    text(&v["clock"])
                );
            }
        }
    }
    let _ = writeln!(md);
}

fn training(md: &mut String, r: &FieldReport) {
    let _ = writeln!(
        md,
        "## Training\n\n`{}`, {} steps per run; the simulated chip trains in fp16, as the ANE does. \
         Losses: the first step's, the mean of the last ten, and validation at the end.\n",
        r.settings.model, r.settings.steps
    );
    let _ = writeln!(
        md,
        "| device | weights | status | ms/step | tokens/s | first loss | final loss | val loss | stall ms | mean lag | compiles |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for part in of_kind(r, "train") {
        let strategy = part.strategy.as_deref().unwrap_or("?");
        let status = part.describe_status();
        let summary: Option<TrainSummary> = part
            .result
            .clone()
            .and_then(|v| serde_json::from_value(v).ok());
        match summary {
            Some(s) => {
                let _ = writeln!(
                    md,
                    "| {} | {strategy} | {status} | {:.1} | {:.0} | {:.4} | {:.4} | {} | {:.1} | {:.2} | {} |",
                    part.device,
                    s.median_ms_per_step,
                    s.median_tokens_per_s,
                    s.first_loss,
                    s.final_loss,
                    s.val_loss.map_or_else(|| "—".into(), |v| format!("{v:.4}")),
                    s.stall_ms,
                    s.mean_staleness,
                    s.efficiency.as_ref().map_or_else(|| "—".into(), |e| num(&e["compiles"], 0))
                );
            }
            None => {
                let _ = writeln!(md, "| {} | {strategy} | {status} |||||||||", part.device);
            }
        }
    }
    let _ = writeln!(md);
}

fn parts(md: &mut String, r: &FieldReport) {
    let _ = writeln!(
        md,
        "## Parts\n\n| part | status | seconds | command |\n|---|---|---|---|"
    );
    for p in &r.parts {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | `anetrain {}` |",
            p.label,
            p.describe_status(),
            p.seconds,
            p.command.join(" ")
        );
    }
    let failed: Vec<&Part> = r
        .parts
        .iter()
        .filter(|p| p.status != PartStatus::Ok)
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(md, "\n### What went wrong\n");
        for p in failed {
            let error = p.error.as_deref().unwrap_or("");
            let fence = fence_for(error);
            let _ = writeln!(
                md,
                "**{}** ({}; log `{}`):\n\n{fence}\n{error}\n{fence}\n",
                p.label,
                p.describe_status(),
                p.log,
            );
        }
    }
}

/// A JSON string's text, empty for anything else.
fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// A JSON number with `decimals`, `—` where there is none.
fn num(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map_or_else(|| "—".into(), |x| format!("{x:.decimals$}"))
}

/// A code fence longer than any run of backticks in `text`, so that the text cannot close it.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

/// Text that cannot break a table row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `2026-12-07 23:10 UTC` of seconds since the Unix epoch (the proleptic Gregorian calendar,
/// by Hinnant's days-to-civil algorithm).
fn utc_date_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_outlasts_the_backticks_it_holds() {
        assert_eq!(fence_for("plain"), "```");
        assert_eq!(fence_for("a ``` b"), "````");
        assert_eq!(fence_for("`````"), "``````");
    }

    #[test]
    fn dates_are_those_of_the_calendar() {
        assert_eq!(utc_date_time(0), "1970-01-01 00:00 UTC");
        // `date -u -d @1796683800`
        assert_eq!(utc_date_time(1_796_683_800), "2026-12-07 22:50 UTC");
        assert_eq!(utc_date_time(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_date_time(4_107_542_399), "2100-02-28 23:59 UTC");
    }
}
