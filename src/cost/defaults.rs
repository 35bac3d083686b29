//! The built-in prices (USD per million tokens), read on 2026-12-02; docs/cost.md names the
//! page each row was read from. A configuration entry of the same model replaces a row.

/// (model, input, cached input (`None`: billed as input), output, batch discount).
pub(super) const DEFAULTS: &[(&str, f64, Option<f64>, f64, f64)] = &[
    // xAI
    ("grok-4.20-0309-reasoning", 2.00, Some(0.20), 6.00, 0.5),
    ("grok-4.20-0309-non-reasoning", 2.00, Some(0.20), 6.00, 0.5),
    ("grok-4-1-fast-reasoning", 0.20, Some(0.05), 0.50, 0.5),
    ("grok-4-1-fast-non-reasoning", 0.20, Some(0.05), 0.50, 0.5),
    ("grok-4", 3.00, Some(0.75), 15.00, 0.5),
    ("grok-3", 3.00, Some(0.75), 15.00, 0.5),
    ("grok-3-mini", 0.30, Some(0.075), 0.50, 0.5),
    // OpenAI
    ("gpt-5", 1.25, Some(0.125), 10.00, 0.5),
    ("gpt-5-mini", 0.25, Some(0.025), 2.00, 0.5),
    ("gpt-5-nano", 0.05, Some(0.005), 0.40, 0.5),
    ("gpt-4.1", 2.00, Some(0.50), 8.00, 0.5),
    ("gpt-4.1-mini", 0.40, Some(0.10), 1.60, 0.5),
    ("gpt-4.1-nano", 0.10, Some(0.025), 0.40, 0.5),
    ("gpt-4o", 2.50, Some(1.25), 10.00, 0.5),
    ("gpt-4o-mini", 0.15, Some(0.075), 0.60, 0.5),
    ("o3", 2.00, None, 8.00, 0.5),
    ("o4-mini", 1.10, None, 4.40, 0.5),
    // OpenAI embeddings: input only.
    ("text-embedding-3-small", 0.02, None, 0.0, 0.5),
    ("text-embedding-3-large", 0.13, None, 0.0, 0.5),
    ("text-embedding-ada-002", 0.10, None, 0.0, 0.5),
    // Anthropic
    ("claude-opus-5", 5.00, Some(0.50), 25.00, 0.5),
    ("claude-opus-4-8", 5.00, Some(0.50), 25.00, 0.5),
    ("claude-opus-4-7", 5.00, Some(0.50), 25.00, 0.5),
    ("claude-opus-4-6", 5.00, Some(0.50), 25.00, 0.5),
    ("claude-opus-4-5", 5.00, Some(0.50), 25.00, 0.5),
    ("claude-opus-4-1", 15.00, Some(1.50), 75.00, 0.5),
    ("claude-opus-4", 15.00, Some(1.50), 75.00, 0.5),
    ("claude-sonnet-5", 2.00, Some(0.20), 10.00, 0.5),
    ("claude-sonnet-4-6", 3.00, Some(0.30), 15.00, 0.5),
    ("claude-sonnet-4-5", 3.00, Some(0.30), 15.00, 0.5),
    ("claude-sonnet-4", 3.00, Some(0.30), 15.00, 0.5),
    ("claude-haiku-4-5", 1.00, Some(0.10), 5.00, 0.5),
    ("claude-3-5-haiku", 0.80, Some(0.08), 4.00, 0.5),
    ("claude-3-haiku", 0.25, Some(0.03), 1.25, 0.5),
];
