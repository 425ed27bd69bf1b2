//! Budget periods on the UTC calendar, shared by the operator (ApiKey status)
//! and the usage API (a key's spend in its current period), so both agree on
//! when a period starts.

use crate::api_key::BudgetPeriod;

/// Start of the budget period containing `now` (unix seconds, UTC calendar):
/// days start at midnight, weeks on Monday, months on the 1st; `Total` never resets.
pub fn period_start(period: Option<BudgetPeriod>, now: i64) -> i64 {
    const DAY: i64 = 86_400;
    let day_start = now - now.rem_euclid(DAY);
    match period {
        None | Some(BudgetPeriod::Total) => 0,
        Some(BudgetPeriod::Daily) => day_start,
        // 1970-01-01 was a Thursday: Monday is 3 days later.
        Some(BudgetPeriod::Weekly) => day_start - (day_start / DAY - 4).rem_euclid(7) * DAY,
        Some(BudgetPeriod::Monthly) => {
            let days = day_start / DAY;
            let (y, m, _) = civil_from_days(days);
            days_from_civil(y, m, 1) * DAY
        }
    }
}

/// Howard Hinnant's civil-from-days algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
