//! Printing: aligned tables, JSON, short one-line excerpts.

use serde_json::Value;

use reasonq::memory::experience::Experience;

use super::{fail, CliError, CliResult, Outcome};

/// Prints rows as aligned columns under a header.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        emit!("{}", text.join("  ").trim_end())
    };
    line(header.iter().map(|h| h.to_string()).collect())?;
    for row in rows {
        line(row.clone())?;
    }
    Ok(())
}

pub(super) fn print_json(value: &Value) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(fail)?;
    emit!("{text}")?;
    Ok(Outcome::Done)
}

pub(super) fn short(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Columns of [`experience_row`].
pub(super) const EXPERIENCE_COLUMNS: [&str; 6] =
    ["id", "domain", "strategy", "outcome", "question", "answer"];

/// One experience as a table row.
pub(super) fn experience_row(e: &Experience) -> Vec<String> {
    vec![
        e.id.to_string(),
        e.data.domain.clone(),
        e.data.strategy.clone(),
        format!("{:?}", e.data.outcome).to_lowercase(),
        short(&e.data.question, 40),
        short(&e.data.answer, 40),
    ]
}
