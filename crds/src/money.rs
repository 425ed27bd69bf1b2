//! Money as exact integers. The API writes amounts as decimal strings in USD
//! (Kubernetes API conventions avoid floats); we hold nano-dollars so that sums
//! across millions of requests stay exact and fit in atomics.

use std::fmt;

/// Decimal USD strings as the schema accepts them: digits, optionally a point and
/// at most six decimals (a micro-dollar per million tokens is the finest price).
pub const DECIMAL_PATTERN: &str = r"^[0-9]+(\.[0-9]{1,6})?$";

const NANOS_PER_USD: u64 = 1_000_000_000;

/// An amount of US dollars, in nano-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Usd(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a decimal USD amount with at most 9 decimals (e.g. \"0.15\")")]
pub struct ParseUsdError(String);

impl std::str::FromStr for Usd {
    type Err = ParseUsdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseUsdError(text.to_owned());
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(frac) || frac.len() > 9 {
            return Err(err());
        }
        if text.ends_with('.') {
            return Err(err());
        }
        let whole: u64 = whole.parse().map_err(|_| err())?;
        let frac_nanos = if frac.is_empty() {
            0
        } else {
            let scale = 10u64.pow(9 - u32::try_from(frac.len()).map_err(|_| err())?);
            frac.parse::<u64>().map_err(|_| err())? * scale
        };
        whole.checked_mul(NANOS_PER_USD).and_then(|w| w.checked_add(frac_nanos)).map(Usd).ok_or_else(err)
    }
}

impl fmt::Display for Usd {
    /// Renders with at least two decimals and no trailing zeros beyond them,
    /// the way people write money: `12.50`, `0.000075`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / NANOS_PER_USD;
        let frac = format!("{:09}", self.0 % NANOS_PER_USD);
        let trimmed = frac.trim_end_matches('0');
        let shown = if trimmed.len() < 2 { &frac[..2] } else { trimmed };
        write!(f, "{whole}.{shown}")
    }
}

/// A per-million-tokens price table for one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prices {
    /// Nano-dollars per million input tokens.
    pub input: u64,
    /// Nano-dollars per million output tokens.
    pub output: u64,
    /// Nano-dollars per million cached input tokens.
    pub cached_input: u64,
    /// Nano-dollars per million input tokens written to the provider's prompt
    /// cache (Anthropic's `cache_creation_input_tokens`, billed above the
    /// input price); `None`: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_input: Option<u64>,
}

impl Prices {
    /// The cost of one request, rounded to the nearest nano-dollar.
    /// `cached` input tokens are part of `input` (OpenAI's convention) and are
    /// billed at the cached price instead of the full one.
    pub fn cost(&self, input: u64, cached: u64, output: u64) -> Usd {
        self.cost_with_cache_writes(input, cached, 0, output)
    }

    /// The most `input` and `output` tokens can cost: the input at the dearer
    /// of the input and cache-write prices, since a request may write all of
    /// its input to the prompt cache (what a budget reserves).
    pub fn max_cost(&self, input: u64, output: u64) -> Usd {
        let writes = if self.cache_write_input.is_some_and(|w| w > self.input) { input } else { 0 };
        self.cost_with_cache_writes(input, 0, writes, output)
    }

    /// [`cost`](Self::cost) where `cache_writes` of the `input` tokens were
    /// written to the prompt cache and are billed at the cache-write price.
    pub fn cost_with_cache_writes(&self, input: u64, cached: u64, cache_writes: u64, output: u64) -> Usd {
        let cached = cached.min(input);
        let cache_writes = cache_writes.min(input - cached);
        let write_price = self.cache_write_input.unwrap_or(self.input);
        let scaled = u128::from(input - cached - cache_writes) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(cache_writes) * u128::from(write_price)
            + u128::from(output) * u128::from(self.output);
        let nanos = (scaled + 500_000) / 1_000_000;
        Usd(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_most_a_request_can_cost_prices_its_input_as_cache_writes_when_dearer() {
        // Anthropic's Claude Sonnet: $3 input, $3.75 cache writes, $15 output per million.
        let mut prices = Prices {
            input: 3_000_000_000,
            output: 15_000_000_000,
            cached_input: 300_000_000,
            cache_write_input: Some(3_750_000_000),
        };
        assert_eq!(prices.max_cost(1_000, 100), Usd(3_750_000 + 1_500_000));
        prices.cache_write_input = None;
        assert_eq!(prices.max_cost(1_000, 100), Usd(3_000_000 + 1_500_000));
    }

    #[test]
    fn parses_api_amounts() {
        assert_eq!("50.00".parse(), Ok(Usd(50 * NANOS_PER_USD)));
        assert_eq!("0.075".parse(), Ok(Usd(75_000_000)));
        assert_eq!("7".parse(), Ok(Usd(7 * NANOS_PER_USD)));
        for bad in ["", ".5", "5.", "-1", "1e3", "abc", "1.0000000001", "1,5"] {
            assert!(bad.parse::<Usd>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn displays_like_money() {
        assert_eq!(Usd(12_500_000_000).to_string(), "12.50");
        assert_eq!(Usd(75_000).to_string(), "0.000075");
        assert_eq!(Usd(0).to_string(), "0.00");
    }

    #[test]
    fn cost_bills_cached_tokens_at_the_cached_price() {
        let prices = Prices {
            input: "0.15".parse::<Usd>().map(|u| u.0).unwrap_or_default(),
            output: 600_000_000,
            cached_input: 75_000_000,
            cache_write_input: Some(187_500_000),
        };
        // 1M input of which 400k cached, 1M output: 0.09 + 0.03 + 0.60.
        assert_eq!(prices.cost(1_000_000, 400_000, 1_000_000), "0.72".parse().unwrap_or_default());
        // And 200k of the rest written to the cache: 0.06 + 0.03 + 0.0375 + 0.60.
        assert_eq!(
            prices.cost_with_cache_writes(1_000_000, 400_000, 200_000, 1_000_000),
            "0.7275".parse().unwrap_or_default()
        );
        // No cache-write price: written tokens cost the input price.
        let plain = Prices { cache_write_input: None, ..prices };
        assert_eq!(plain.cost_with_cache_writes(1_000_000, 400_000, 200_000, 0), plain.cost(1_000_000, 400_000, 0));
    }

    proptest! {
        #[test]
        fn display_round_trips(nanos in 0u64..u64::MAX / 2) {
            let text = Usd(nanos).to_string();
            prop_assert_eq!(text.parse::<Usd>(), Ok(Usd(nanos)));
        }

        #[test]
        fn cost_is_additive_up_to_rounding(a in 0u64..10_000_000, b in 0u64..10_000_000, price in 0u64..100_000_000_000) {
            let p = Prices { input: price, output: price, cached_input: price, cache_write_input: Some(price) };
            let whole = p.cost(a + b, 0, 0).0;
            let parts = p.cost(a, 0, 0).0 + p.cost(b, 0, 0).0;
            prop_assert!(whole.abs_diff(parts) <= 1);
        }
    }
}
