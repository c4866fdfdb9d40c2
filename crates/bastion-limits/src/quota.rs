//! Quota windows: the calendar day or month (UTC) a counter belongs to.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc};

use crate::LimitError;

/// The period a quota counts over, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// A calendar day, midnight to midnight UTC.
    Day,
    /// A calendar month, from the first at midnight UTC.
    Month,
}

impl Period {
    /// The window containing `now`: its name (`2026-12-06` for a day,
    /// `2026-12` for a month), which a store keys its counter by, and the
    /// time left until it ends.
    pub fn window(self, now: DateTime<Utc>) -> (String, Duration) {
        let today = now.date_naive();
        let (name, end) = match self {
            Period::Day => (today.format("%Y-%m-%d").to_string(), today.succ_opt()),
            Period::Month => {
                let (year, month) = match today.month() {
                    12 => (today.year() + 1, 1),
                    month => (today.year(), month + 1),
                };
                (today.format("%Y-%m").to_string(), NaiveDate::from_ymd_opt(year, month, 1))
            }
        };
        // No next day only at the end of chrono's calendar.
        let left = end
            .map_or(Duration::ZERO, |end| (end.and_time(NaiveTime::MIN).and_utc() - now).to_std().unwrap_or_default());
        (name, left)
    }

    /// The period's name: `day` or `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Period {
    type Err = LimitError;

    /// `day` or `month`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "day" => Ok(Period::Day),
            "month" => Ok(Period::Month),
            other => Err(LimitError::Invalid(format!("`{other}`: a quota period is `day` or `month`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, s).unwrap()
    }

    #[test]
    fn day_windows() {
        assert_eq!(Period::Day.window(at(2026, 12, 6, 0, 0, 0)), ("2026-12-06".into(), Duration::from_secs(86_400)));
        assert_eq!(Period::Day.window(at(2026, 12, 6, 23, 59, 59)), ("2026-12-06".into(), Duration::from_secs(1)));
        assert_eq!(
            Period::Day.window(at(2026, 12, 31, 12, 0, 0)),
            ("2026-12-31".into(), Duration::from_secs(12 * 3_600))
        );
        assert_eq!(
            Period::Day.window(at(2028, 2, 28, 18, 0, 0)),
            ("2028-02-28".into(), Duration::from_secs(6 * 3_600))
        );
        assert_eq!(Period::Day.window(at(2028, 2, 29, 0, 0, 0)).0, "2028-02-29");
        // Sub-second precision is kept.
        let now = at(2026, 1, 1, 23, 59, 59) + chrono::TimeDelta::milliseconds(250);
        assert_eq!(Period::Day.window(now).1, Duration::from_millis(750));
    }

    #[test]
    fn month_windows() {
        assert_eq!(
            Period::Month.window(at(2026, 12, 6, 0, 0, 0)),
            ("2026-12".into(), Duration::from_secs(26 * 86_400))
        );
        // December into January.
        assert_eq!(Period::Month.window(at(2026, 12, 31, 23, 59, 59)), ("2026-12".into(), Duration::from_secs(1)));
        assert_eq!(Period::Month.window(at(2027, 1, 1, 0, 0, 0)), ("2027-01".into(), Duration::from_secs(31 * 86_400)));
        // A leap February has 29 days, another 28.
        assert_eq!(Period::Month.window(at(2028, 2, 1, 0, 0, 0)), ("2028-02".into(), Duration::from_secs(29 * 86_400)));
        assert_eq!(Period::Month.window(at(2027, 2, 1, 0, 0, 0)), ("2027-02".into(), Duration::from_secs(28 * 86_400)));
        assert_eq!(
            Period::Month.window(at(2028, 2, 29, 12, 0, 0)),
            ("2028-02".into(), Duration::from_secs(12 * 3_600))
        );
        assert_eq!(Period::Month.window(at(2028, 3, 1, 0, 0, 0)).0, "2028-03");
    }

    #[test]
    fn names() {
        assert_eq!(Period::Day.as_str(), "day");
        assert_eq!(Period::Month.to_string(), "month");
        assert_eq!("day".parse::<Period>().unwrap(), Period::Day);
        assert_eq!("month".parse::<Period>().unwrap(), Period::Month);
        assert!("week".parse::<Period>().is_err());
    }
}
