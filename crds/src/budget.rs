//! Budget periods on the UTC calendar, shared by the operator (ApiKey status)
//! and the usage API (a key's spend in its current period), so both agree on
//! when a period starts.

use crate::api_key::BudgetPeriod;

/// Start of the budget period containing `now` (unix seconds, UTC calendar):
/// days start at midnight, weeks on Monday, months on the 1st; `Total` never resets.
pub fn period_start(period: Option<BudgetPeriod>, now: i64) -> i64 {
    let Some(period) = period.filter(|p| *p != BudgetPeriod::Total) else { return 0 };
    // The calendar arithmetic is jiff's; out-of-range instants (far beyond any
    // real clock) fall back to the epoch rather than panic.
    let day = || -> Result<jiff::civil::Date, jiff::Error> {
        Ok(jiff::Timestamp::from_second(now)?.to_zoned(jiff::tz::TimeZone::UTC).date())
    };
    let start = day().and_then(|d| match period {
        BudgetPeriod::Daily | BudgetPeriod::Total => Ok(d),
        BudgetPeriod::Weekly => d.checked_sub(jiff::Span::new().days(i64::from(d.weekday().to_monday_zero_offset()))),
        BudgetPeriod::Monthly => Ok(d.first_of_month()),
    });
    start.and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC)).map_or(0, |z| z.timestamp().as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_starts_follow_the_utc_calendar() {
        // 2026-11-26T08:00:00Z is a Thursday.
        let now = 1_795_680_000;
        assert_eq!(period_start(Some(BudgetPeriod::Daily), now), 1_795_651_200); // 2026-11-26
        assert_eq!(period_start(Some(BudgetPeriod::Weekly), now), 1_795_392_000); // Mon 2026-11-23
        assert_eq!(period_start(Some(BudgetPeriod::Monthly), now), 1_793_491_200); // 2026-11-01
        assert_eq!(period_start(Some(BudgetPeriod::Total), now), 0);
    }

    #[test]
    fn weeks_start_on_monday_even_before_the_epoch() {
        // 1969-12-31T12:00:00Z was a Wednesday; that week began on Monday 1969-12-29.
        assert_eq!(period_start(Some(BudgetPeriod::Weekly), -43_200), -3 * 86_400);
        assert_eq!(period_start(Some(BudgetPeriod::Monthly), -43_200), -31 * 86_400);
    }
}
