//! When a certificate stops being valid (its validity's `notAfter`, read
//! from the DER), and the days left as a metric, so that an expiring
//! certificate shows on a dashboard before peers start refusing it.

use std::time::Duration;

use rustls::pki_types::CertificateDer;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::cert_name::der_element;
use crate::tls::TlsIdentity;

/// Gauge: days until this process's certificate expires (negative once
/// it has).
pub const CERT_EXPIRY_METRIC: &str = "quern_certificate_expiry_days";

/// Its help text (in `node::metric_catalog`, which every process's
/// metrics endpoint describes).
pub const CERT_EXPIRY_HELP: &str =
    "Days until this process's certificate expires; peers refuse it after that.";

/// How often `publish_expiry` refreshes the gauge.
pub const EXPIRY_REFRESH: Duration = Duration::from_secs(600);

/// The end of `cert`'s validity, if it is a certificate DER we can read.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<OffsetDateTime> {
    const SEQUENCE: u8 = 0x30;
    const VERSION: u8 = 0xa0;
    let (SEQUENCE, certificate, _) = der_element(cert.as_ref())? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = der_element(certificate)? else {
        return None;
    };
    let (tag, _, mut rest) = der_element(tbs)?;
    if tag == VERSION {
        rest = der_element(rest)?.2; // the serial number
    }
    let rest = der_element(rest)?.2; // the signature algorithm
    let rest = der_element(rest)?.2; // the issuer
    let (SEQUENCE, validity, _) = der_element(rest)? else {
        return None;
    };
    let after_start = der_element(validity)?.2;
    let (tag, text, _) = der_element(after_start)?;
    parse_time(tag, text)
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950 to 2049) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`), as RFC 5280 allows them.
fn parse_time(tag: u8, text: &[u8]) -> Option<OffsetDateTime> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match (tag, text.len()) {
        (0x17, 12) => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        (0x18, 14) => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |at: usize| rest[at..at + 2].parse::<u8>().ok();
    let date = Date::from_calendar_date(year, Month::try_from(field(0)?).ok()?, field(2)?).ok()?;
    let time = Time::from_hms(field(4)?, field(6)?, field(8)?).ok()?;
    Some(PrimitiveDateTime::new(date, time).assume_utc())
}

/// Days from `now` to `not_after`.
pub fn days_left(not_after: OffsetDateTime, now: OffsetDateTime) -> f64 {
    (not_after - now).as_seconds_f64() / 86_400.0
}

/// Keeps the expiry gauge of the certificate `identity` presents
/// current, every `EXPIRY_REFRESH`; runs until dropped (spawn it). A
/// certificate whose end of validity cannot be read publishes nothing.
pub fn publish_expiry(identity: &TlsIdentity) -> impl Future<Output = ()> + Send + 'static {
    let not_after = identity.not_after();
    async move {
        let Some(not_after) = not_after else {
            tracing::warn!(
                "the certificate's end of validity is unreadable: no {CERT_EXPIRY_METRIC}"
            );
            return;
        };
        let gauge = metrics::gauge!(CERT_EXPIRY_METRIC);
        loop {
            gauge.set(days_left(not_after, OffsetDateTime::now_utc()));
            tokio::time::sleep(EXPIRY_REFRESH).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::ClusterCa;

    #[test]
    fn the_end_of_validity_is_read_from_an_issued_certificate() {
        let ca = ClusterCa::generate(1).unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        for days in [1, 30, 365 * 40] {
            let end = now + time::Duration::days(days);
            let issued = ca.issue_valid("n1", &[], now, end).unwrap();
            assert_eq!(not_after(&issued.cert_der), Some(end), "{days} days");
            assert_eq!(days_left(end, now), days as f64);
        }
        assert_eq!(not_after(&CertificateDer::from(b"junk".to_vec())), None);
    }

    #[test]
    fn the_gauge_says_the_days_left_of_the_certificate_presented() {
        let ca = ClusterCa::generate(1).unwrap();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let issued = ca
            .issue_valid("node-1", &[], now, now + time::Duration::days(30))
            .unwrap();
        let identity =
            TlsIdentity::from_pem(ca.cert_pem(), &issued.cert_pem, &issued.key_pem).unwrap();
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        metrics::with_local_recorder(&recorder, || {
            // Polled on this thread: the first setting, then the sleep.
            let wait = Duration::from_millis(50);
            let publish = publish_expiry(&identity);
            let ran = runtime.block_on(async { tokio::time::timeout(wait, publish).await });
            assert!(ran.is_err(), "it runs until dropped");
        });
        let text = handle.render();
        let days: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{CERT_EXPIRY_METRIC} ")))
            .unwrap_or_else(|| panic!("no gauge in {text}"))
            .parse()
            .unwrap();
        assert!(days > 29.99 && days <= 30.0, "{days} days left");
    }

    #[test]
    fn both_time_forms_parse() {
        let utc = parse_time(0x17, b"491231235959Z").unwrap();
        assert_eq!((utc.year(), utc.second()), (2049, 59));
        assert_eq!(parse_time(0x17, b"500101000000Z").unwrap().year(), 1950);
        assert_eq!(parse_time(0x18, b"20991231000000Z").unwrap().year(), 2099);
        for bad in [
            &b"4912312359Z"[..],
            b"49123123595Z9",
            b"491331235959Z",
            b"+9123123595Z",
        ] {
            assert_eq!(
                parse_time(0x17, bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
