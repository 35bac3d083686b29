//! Money: what a call costs from the usage the server reported, by a price table per model
//! (built-in defaults, overridden per model in the configuration), and token estimates of
//! requests not yet sent ([`tokens`]). Amounts are integer picodollars ([`Money`]): a price
//! in USD per million tokens times a token count is an exact integer there, so totals over
//! millions of lines carry no rounding error. docs/cost.md says where each default was read.

mod defaults;
pub mod tokens;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Picodollars in a dollar.
pub const PICO_PER_USD: u64 = 1_000_000_000_000;

/// An amount in picodollars (10^-12 USD); sums saturate at about 18 million dollars.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Money(pub u64);

impl Money {
    pub const ZERO: Money = Money(0);

    /// `usd` dollars, rounded to the picodollar; `None` for a negative or non-finite amount.
    pub fn from_usd(usd: f64) -> Option<Money> {
        if !usd.is_finite() || usd < 0.0 {
            return None;
        }
        let pico = (usd * PICO_PER_USD as f64).round();
        // Past u64 the cap is out of reach anyway.
        Some(Money(if pico >= u64::MAX as f64 {
            u64::MAX
        } else {
            pico as u64
        }))
    }

    /// In dollars (for display and JSON; sums are kept in picodollars).
    pub fn usd(self) -> f64 {
        self.0 as f64 / PICO_PER_USD as f64
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for Money {
    /// `$12.34`, or more decimals for small amounts (`$0.000123`), never shown as `$0.00`
    /// when it is not zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let usd = self.usd();
        if self.0 == 0 {
            write!(f, "$0")
        } else if usd >= 1.0 {
            write!(f, "${usd:.2}")
        } else if usd >= 0.01 {
            write!(f, "${usd:.4}")
        } else {
            write!(f, "${usd:.6}")
        }
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

/// One model's prices, USD per million tokens, as written in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Prompt tokens.
    pub input: f64,
    /// Prompt tokens the provider served from its own prompt cache (`cached_tokens`);
    /// absent: billed as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Completion tokens (reasoning included).
    pub output: f64,
    /// Fraction taken off answers that came through the provider's batch API (0.5: half
    /// price).
    #[serde(default = "half")]
    pub batch_discount: f64,
}

fn half() -> f64 {
    0.5
}

/// Tokens one answer was billed for, as the server reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Prompt tokens, cached ones included.
    pub prompt: u64,
    /// Of those, served from the provider's prompt cache.
    pub cached: u64,
    /// Output tokens billed (completion and reasoning).
    pub output: u64,
}

impl Rates {
    /// Refuses a price no bill can have, naming it.
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("input", Some(self.input)),
            ("cached_input", self.cached_input),
            ("output", Some(self.output)),
        ];
        for (name, rate) in rates {
            if let Some(rate) = rate {
                if !rate.is_finite() || rate < 0.0 {
                    return Err(format!(
                        "{name} = {rate} is not a price (USD per million tokens, 0 or more)"
                    ));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.batch_discount) {
            return Err(format!(
                "batch_discount = {} must be between 0 and 1 (0.5: half price)",
                self.batch_discount
            ));
        }
        Ok(())
    }

    /// What `tokens` cost at these prices; `via_batch`: through the provider's batch API.
    pub fn cost(&self, tokens: &Tokens, via_batch: bool) -> Money {
        let cached = tokens.cached.min(tokens.prompt);
        let pico = u128::from(tokens.prompt - cached) * micros(self.input)
            + u128::from(cached) * micros(self.cached_input.unwrap_or(self.input))
            + u128::from(tokens.output) * micros(self.output);
        let pico = if via_batch {
            // Basis points, so the discount stays in integers too.
            let kept = 10_000
                - (self.batch_discount * 10_000.0)
                    .round()
                    .clamp(0.0, 10_000.0) as u128;
            pico * kept / 10_000
        } else {
            pico
        };
        Money(u64::try_from(pico).unwrap_or(u64::MAX))
    }
}

/// A rate in USD per million tokens as microdollars per million tokens: one token costs that
/// many picodollars.
fn micros(usd_per_million: f64) -> u128 {
    (usd_per_million.max(0.0) * 1e6).round() as u128
}

/// The price table: the built-in defaults with the configuration's entries over them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prices {
    table: BTreeMap<String, Rates>,
}

impl Default for Prices {
    fn default() -> Self {
        Prices::with_overrides(&BTreeMap::new())
    }
}

impl Prices {
    /// The defaults, with `overrides` (model -> rates) replacing or adding models.
    pub fn with_overrides(overrides: &BTreeMap<String, Rates>) -> Prices {
        let mut table: BTreeMap<String, Rates> = defaults::DEFAULTS
            .iter()
            .map(|&(model, input, cached, output, discount)| {
                (
                    model.to_string(),
                    Rates {
                        input,
                        cached_input: cached,
                        output,
                        batch_discount: discount,
                    },
                )
            })
            .collect();
        for (model, rates) in overrides {
            table.insert(model.clone(), rates.clone());
        }
        Prices { table }
    }

    /// The prices of `model`: its own entry, else that of the name it is a dated snapshot of
    /// (`gpt-4o-mini-2024-07-18`, `claude-sonnet-4-5-20250929`, `grok-4-0709`, `-latest`).
    /// An unknown model has none: its cost is unknown, never zero.
    pub fn get(&self, model: &str) -> Option<&Rates> {
        if let Some(rates) = self.table.get(model) {
            return Some(rates);
        }
        // The longest entry the model is a snapshot of.
        self.table
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .and_then(|rest| rest.strip_prefix('-'))
                    .is_some_and(is_snapshot)
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, rates)| rates)
    }

    /// What `tokens` of `model` cost; `None` when the model has no price.
    pub fn cost(&self, model: &str, tokens: &Tokens, via_batch: bool) -> Option<Money> {
        self.get(model).map(|rates| rates.cost(tokens, via_batch))
    }

    /// Every model with a price, for `docs/cost.md` and tests.
    pub fn models(&self) -> impl Iterator<Item = (&str, &Rates)> {
        self.table.iter().map(|(m, r)| (m.as_str(), r))
    }
}

/// A snapshot suffix: a date or version stamp of at least four digits (`0709`, `20250929`,
/// `2024-07-18`) or `latest`; never a word (`gpt-5-pro` is not `gpt-5`).
fn is_snapshot(rest: &str) -> bool {
    rest == "latest"
        || (rest.bytes().filter(u8::is_ascii_digit).count() >= 4
            && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_are_exact_integers_and_the_batch_discount_applies() {
        let rates = Rates {
            input: 0.15,
            cached_input: Some(0.075),
            output: 0.60,
            batch_discount: 0.5,
        };
        let t = Tokens {
            prompt: 1_000,
            cached: 200,
            output: 500,
        };
        // 800 x 0.15 + 200 x 0.075 + 500 x 0.60 microdollars = 435 microdollars.
        assert_eq!(rates.cost(&t, false), Money(435_000_000));
        assert_eq!(rates.cost(&t, true), Money(217_500_000));
        assert_eq!(Money(435_000_000).to_string(), "$0.000435");
        assert_eq!(Money::from_usd(0.5), Some(Money(PICO_PER_USD / 2)));
        assert_eq!(Money::from_usd(-1.0), None);
    }

    #[test]
    fn snapshots_find_their_model_and_other_names_find_none() {
        let p = Prices::default();
        assert_eq!(p.get("gpt-4o-mini-2024-07-18"), p.get("gpt-4o-mini"));
        assert!(p.get("gpt-4o-mini").is_some());
        assert_ne!(p.get("gpt-4o-mini"), p.get("gpt-4o"));
        assert_eq!(p.get("grok-4-0709"), p.get("grok-4"));
        assert_eq!(p.get("grok-3-mini-latest"), p.get("grok-3-mini"));
        assert!(p.get("gpt-5-pro").is_none() || p.get("gpt-5-pro") != p.get("gpt-5"));
        assert!(p.get("acme-1").is_none());
        assert!(p.get("claude-sonnet-4-9").is_none());
    }

    #[test]
    fn overrides_replace_defaults_and_add_models() {
        let mut o = BTreeMap::new();
        o.insert(
            "acme-1".to_string(),
            Rates {
                input: 1.0,
                cached_input: None,
                output: 2.0,
                batch_discount: 0.0,
            },
        );
        let p = Prices::with_overrides(&o);
        let t = Tokens {
            prompt: 1_000_000,
            cached: 500_000,
            output: 0,
        };
        // No cached rate: cached tokens bill as input.
        assert_eq!(p.cost("acme-1", &t, true), Some(Money(PICO_PER_USD)));
    }
}
