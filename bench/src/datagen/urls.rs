//! URLs, as crawl frontiers and link dumps list them:
//! `https://www.ridato.com/en/products/83721?utm_source=kaka&page=2`.
//!
//! Most keys start with `https://www.` (the rest `https://` + another
//! subdomain, or `http://`), so sorted neighbours share long prefixes;
//! domains, path segments and query parameters follow Zipf popularity.
//! Every URL carries a random 40-bit id (a path segment or a query value),
//! so fresh URLs practically never collide and the duplicate ratio stays
//! the one asked for.

use std::io::Write;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::shaped::FreshRecord;
use super::vocab::Vocabulary;

const DOMAINS: usize = 50_000;
/// Top-level domain of a domain rank: fixed per domain, mostly `.com`.
const TLDS: [&str; 16] = [
    "com", "com", "org", "com", "net", "com", "io", "com", "de", "com", "co.uk", "org", "com",
    "fr", "com", "jp",
];
const SUBDOMAINS: &[&str] = &[
    "api", "cdn", "m", "blog", "shop", "docs", "static", "news", "app", "mail",
];
const SEGMENTS: usize = 30_000;
const COMMON_SEGMENTS: &[&str] = &[
    "en",
    "products",
    "blog",
    "category",
    "api",
    "v1",
    "static",
    "images",
    "wp-content",
    "uploads",
    "search",
    "news",
    "docs",
    "tag",
    "user",
    "item",
    "p",
    "assets",
    "media",
    "help",
];
/// Path depth before the id or the query, skewed towards 1-3.
const DEPTHS: [usize; 12] = [0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 6];
const PAGES: &[&str] = &[
    "index.html",
    "index.php",
    "article.html",
    "view.php",
    "default.aspx",
];
const PARAMS: &[&str] = &[
    "utm_source",
    "q",
    "page",
    "ref",
    "lang",
    "utm_medium",
    "sort",
    "s",
    "utm_campaign",
    "v",
];
const LANGS: &[&str] = &["en", "de", "fr", "es", "ja", "pt", "it", "nl"];

pub(crate) struct Urls {
    domains: Vocabulary,
    subdomains: Vocabulary,
    segments: Vocabulary,
    pages: Vocabulary,
    params: Vocabulary,
    langs: Vocabulary,
}

impl Urls {
    pub(crate) fn new() -> Self {
        Self {
            domains: Vocabulary::new(&[], DOMAINS),
            subdomains: Vocabulary::of(SUBDOMAINS),
            segments: Vocabulary::new(COMMON_SEGMENTS, SEGMENTS),
            pages: Vocabulary::of(PAGES),
            params: Vocabulary::of(PARAMS),
            langs: Vocabulary::of(LANGS),
        }
    }

    fn push_host(&self, rng: &mut ChaCha8Rng, url: &mut Vec<u8>) {
        match rng.random_range(0..20u32) {
            0..=13 => url.extend_from_slice(b"www."),
            14..=16 => {}
            _ => {
                self.subdomains.push(rng, url);
                url.push(b'.');
            }
        }
        let domain = self.domains.rank(rng);
        self.domains.push_rank(domain, url);
        url.push(b'.');
        url.extend_from_slice(TLDS[domain % TLDS.len()].as_bytes());
    }

    fn push_query_value(&self, rng: &mut ChaCha8Rng, param: &str, url: &mut Vec<u8>) {
        match param {
            "page" => write!(url, "{}", rng.random_range(1..=40u32)).unwrap(),
            "lang" => self.langs.push(rng, url),
            "q" | "s" => {
                for word in 0..rng.random_range(1..=3) {
                    if word > 0 {
                        url.push(b'+');
                    }
                    self.segments.push(rng, url);
                }
            }
            _ => self.segments.push(rng, url),
        }
    }
}

impl FreshRecord for Urls {
    /// Scheme, subdomain, a long domain, 6 segments of up to 10 bytes, an id
    /// and 3 parameters of up to 30 bytes each: about 200.
    const MAX_LEN: usize = 256;

    fn fresh(&mut self, rng: &mut ChaCha8Rng, url: &mut Vec<u8>) {
        let secure = rng.random_range(0..100u32) < 85;
        url.extend_from_slice(if secure { b"https://" } else { b"http://" });
        self.push_host(rng, url);
        for _ in 0..DEPTHS[rng.random_range(0..DEPTHS.len())] {
            url.push(b'/');
            self.segments.push(rng, url);
        }
        let id = rng.random_range(1..1u64 << 40);
        let id_in_path = rng.random_bool(0.4);
        if id_in_path {
            write!(url, "/{id}").unwrap();
        } else if rng.random_bool(0.3) {
            url.push(b'/');
            self.pages.push(rng, url);
        } else {
            url.push(b'/');
        }
        let params = rng.random_range(if id_in_path { 0..=2 } else { 0..=1 });
        for i in 0..params {
            url.push(if i == 0 { b'?' } else { b'&' });
            let param = self.params.common_word(rng);
            write!(url, "{param}=").unwrap();
            self.push_query_value(rng, param, url);
        }
        if !id_in_path {
            url.push(if params == 0 { b'?' } else { b'&' });
            write!(url, "id={id}").unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datagen::shaped::Shape;
    use crate::datagen::shaped::testing::*;

    #[test]
    fn same_spec_gives_same_bytes() {
        assert_deterministic(Shape::Urls);
    }

    #[test]
    fn duplicates_as_asked() {
        assert_duplicates_as_asked(Shape::Urls);
    }

    #[test]
    fn every_key_is_a_url_and_most_share_the_long_prefix() {
        let all: Vec<Vec<u8>> = generate(&spec(Shape::Urls)).into_iter().flatten().collect();
        assert!(all.len() > 1_000);
        for url in &all {
            assert!(url.starts_with(b"http"), "{}", String::from_utf8_lossy(url));
            assert!(url.len() <= Urls::MAX_LEN);
            assert!(url.iter().all(|b| b.is_ascii_graphic()));
            assert!(url.split(|&b| b == b'/').count() >= 4, "scheme, host, path");
        }
        let share = |prefix: &[u8]| {
            all.iter().filter(|u| u.starts_with(prefix)).count() as f64 / all.len() as f64
        };
        assert!(share(b"https://") > 0.8);
        assert!(share(b"https://www.") > 0.55);
        assert!(mean_shared_prefix(Shape::Urls) > 14.0);
    }

    #[test]
    fn popular_domains_dominate() {
        let all: Vec<Vec<u8>> = generate(&spec(Shape::Urls)).into_iter().flatten().collect();
        let host = |url: &[u8]| -> Vec<u8> {
            let rest = &url[url.iter().position(|&b| b == b'/').unwrap() + 2..];
            rest[..rest.iter().position(|&b| b == b'/').unwrap()].to_vec()
        };
        let top = all
            .iter()
            .map(|u| host(u))
            .filter(|h| h == b"kaka.com" || h.ends_with(b".kaka.com"))
            .count();
        // Rank 0 of 50,000 domains under Zipf: 1 / H(50000) ~ 9% of URLs.
        let share = top as f64 / all.len() as f64;
        assert!((0.07..0.12).contains(&share), "top domain share {share}");
    }
}
