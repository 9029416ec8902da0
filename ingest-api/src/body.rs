//! Reading a JSON body the API's way: media type, content coding, size limit, and serde errors
//! turned into problems that name the field and say why (instead of axum's plain-text
//! rejections); and the headers the API reads once ([`single_header`]).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use crate::problem::{Kind, Problem};

/// Whether an absent or empty body is an error or means "no body".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Required {
    Yes,
    /// An empty body is read as `None`.
    No,
}

/// Read at most `limit` bytes of `body` and parse them as `T`. Problems: 413 over the limit,
/// 415 for a media type other than JSON or a content coding other than identity, 400 for an
/// empty body (when required), a Content-Type sent twice, malformed JSON, a missing, unknown
/// or mistyped field.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    required: Required,
) -> Result<Option<T>, Problem> {
    check_content_encoding(headers)?;
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit as u64
    {
        return Err(too_large(limit));
    }
    let mut bytes = Vec::new();
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            Problem::new(
                Kind::UnreadableBody,
                format!("reading the body failed: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return match required {
            Required::Yes => Err(Problem::new(
                Kind::EmptyBody,
                "the body is empty; send a JSON object (Content-Type: application/json)",
            )),
            Required::No => Ok(None),
        };
    }
    check_media_type(headers)?;
    parse_json(&bytes).map(Some)
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        Kind::BodyTooLarge,
        format!("the body is larger than the limit of {limit} bytes"),
    )
}

/// The one value of the header `name` (e.g. `Idempotency-Key`), `None` when absent. A header
/// the API reads as one value but sent more than once is a 400 `invalid-header` naming it:
/// taking the first (or the last) would leave it to the intermediaries which one counts.
pub fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a HeaderValue>, Problem> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    let more = values.count();
    if more > 0 {
        return Err(Problem::new(
            Kind::InvalidHeader,
            format!(
                "the {name} header was sent {} times; send it once",
                more + 1
            ),
        )
        .field(name));
    }
    Ok(first)
}

/// The body must come as sent (`Content-Encoding` absent or `identity`): a compressed body is
/// 415 naming `Content-Encoding`, answered with `Accept-Encoding: identity`. Decoding it is
/// refused rather than done: the body limit (`max_body_bytes`) is on the bytes received, and
/// a signed body (the PSP's callback) is verified over exactly those.
pub fn check_content_encoding(headers: &HeaderMap) -> Result<(), Problem> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Err(Problem::new(
                    Kind::UnsupportedMediaType,
                    format!(
                        "Content-Encoding {coding:?} is not supported; send the body \
                         uncompressed (identity)"
                    ),
                )
                .field("Content-Encoding"));
            }
        }
    }
    Ok(())
}

/// `application/json`, optionally with parameters, or any `application/*+json`; sent once.
fn check_media_type(headers: &HeaderMap) -> Result<(), Problem> {
    let Some(value) = single_header(headers, "Content-Type")? else {
        return Err(Problem::new(
            Kind::UnsupportedMediaType,
            "the request has no Content-Type; send application/json",
        )
        .field("Content-Type"));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    // JSON is UTF-8 (RFC 8259 §8.1): a body declared in another charset would be decoded as
    // something it is not, so it is refused rather than guessed at.
    let charset = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .skip(1)
        .find_map(|param| {
            let (name, value) = param.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        });
    if let Some(charset) = charset
        && charset != "utf-8"
        && charset != "utf8"
    {
        return Err(Problem::new(
            Kind::UnsupportedMediaType,
            format!("charset {charset:?} is not supported; JSON bodies are UTF-8 (RFC 8259)"),
        )
        .field("Content-Type"));
    }
    if json {
        Ok(())
    } else {
        Err(Problem::new(
            Kind::UnsupportedMediaType,
            format!("Content-Type {essence:?} is not supported; send application/json"),
        )
        .field("Content-Type"))
    }
}

/// Parse `bytes` as `T`, turning serde's error into a problem naming the field.
/// Bodies are JSON objects: anything else (serde would read an array into a struct, field by
/// position) is a wrong type.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Err(e) => json_problem(".", e),
                Ok(_) => Problem::new(Kind::WrongType, "the body must be a JSON object"),
            },
        );
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        json_problem(&path, e.into_inner())
    })?;
    de.end().map_err(|e| json_problem(".", e))?;
    Ok(value)
}

/// `deserialize_with` for a nested struct field: only a JSON object is accepted (not an array
/// read field by position).
pub fn object<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    struct ObjectOnly<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// serde_json's message without its " at line L column C" suffix.
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// The name between the first pair of backticks in `msg`.
fn backticked(msg: &str) -> Option<&str> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(&msg[start..start + len])
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn json_problem(path: &str, e: serde_json::Error) -> Problem {
    use serde_json::error::Category;
    let msg = message(&e);
    let at = format!("line {} column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof => {
            Problem::new(Kind::MalformedJson, format!("{msg} at {at}"))
        }
        Category::Io => Problem::new(Kind::UnreadableBody, msg),
        Category::Data => {
            let root = path.is_empty() || path == ".";
            if let Some(name) = msg.strip_prefix("duplicate field ").and_then(backticked) {
                // A repeated member name makes the object ambiguous (RFC 8259 §4: names SHOULD
                // be unique); it is malformed input, not a value that failed validation.
                let field = join(path, name);
                Problem::new(
                    Kind::MalformedJson,
                    format!("field {field} appears more than once in the object"),
                )
                .field(field)
            } else if let Some(name) = msg.strip_prefix("missing field ").and_then(backticked) {
                let field = join(path, name);
                Problem::new(
                    Kind::MissingField,
                    format!("field {field} is required but missing"),
                )
                .field(field)
            } else if msg.starts_with("unknown field ") {
                let name = backticked(&msg).unwrap_or("");
                let field = join(path, name);
                let expected = msg
                    .split_once(", expected ")
                    .map(|(_, rest)| format!("; expected {rest}"))
                    .unwrap_or_default();
                Problem::new(
                    Kind::UnknownField,
                    format!("field {field} is not part of this request{expected}"),
                )
                .field(field)
            } else if msg.starts_with("invalid type: floating point")
                && msg
                    .rsplit_once("expected ")
                    .is_some_and(|(_, t)| t.starts_with('i') || t.starts_with('u'))
            {
                // serde_json reads an integer literal beyond u64 as a float: the client wrote a
                // number where a number goes, out of range or with a fraction (break report 13,
                // D5: it was a 400 "wrong type" there and a 422 just below u64::MAX).
                let field = if root { "" } else { path };
                let problem = Problem::new(
                    Kind::InvalidField,
                    format!(
                        "field {field}: a whole number in range is expected, without a fraction \
                         or an exponent ({msg})"
                    ),
                );
                if root { problem } else { problem.field(path) }
            } else if msg.starts_with("invalid type") || msg.starts_with("invalid length") {
                if root {
                    Problem::new(
                        Kind::WrongType,
                        format!("the body must be a JSON object: {msg}"),
                    )
                } else {
                    Problem::new(Kind::WrongType, format!("field {path}: {msg}")).field(path)
                }
            } else if root {
                Problem::new(Kind::InvalidField, msg)
            } else {
                Problem::new(Kind::InvalidField, format!("field {path}: {msg}")).field(path)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Outer {
        cart_id: String,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Inner {
        postal_code: String,
        line2: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct WithNested {
        #[serde(deserialize_with = "object")]
        inner: Inner,
    }

    fn problem(json: &str) -> Problem {
        parse_json::<Outer>(json.as_bytes()).expect_err("should fail")
    }

    #[test]
    fn malformed_json_is_400_with_position() {
        let p = problem(r#"{"cartId": "#);
        assert_eq!(p.slug(), "malformed-json");
        assert_eq!(p.status, 400);
        assert!(p.detail.contains("line 1"), "{}", p.detail);
        assert_eq!(
            problem(r#"{"cartId":"a","inner":{"postalCode":"1"}} x"#).slug(),
            "malformed-json"
        );
    }

    #[test]
    fn a_missing_field_is_named_with_its_path() {
        let p = problem(r#"{"inner":{"postalCode":"1"}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("missing-field", Some("cartId"))
        );
        let p = problem(r#"{"cartId":"a","inner":{}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("missing-field", Some("inner.postalCode"))
        );
    }

    /// Break report 13, D5: 2^63 was a 422 and 2^64 a 400 "invalid type: floating point",
    /// one kind of mistake answered two ways. A number where an integer goes is a 422 naming
    /// the field, in range or not, with a fraction or not; a string there stays a 400.
    #[test]
    fn a_number_that_is_no_integer_in_range_is_422_naming_the_field() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        #[allow(dead_code)]
        struct Amount {
            amount_minor: i64,
        }
        for number in [
            "9223372036854775808",
            "18446744073709551616",
            "1000000000000000000000000000000",
            "100.0",
            "1e2",
        ] {
            let p = parse_json::<Amount>(format!(r#"{{"amountMinor":{number}}}"#).as_bytes())
                .expect_err("refused");
            assert_eq!(
                (p.slug(), p.status, p.field.as_deref()),
                ("invalid-field", 422, Some("amountMinor")),
                "{number}: {}",
                p.detail
            );
        }
        let p = parse_json::<Amount>(br#"{"amountMinor":"1"}"#).expect_err("refused");
        assert_eq!((p.slug(), p.status), ("wrong-type", 400));
    }

    #[test]
    fn a_repeated_member_is_malformed_json_naming_the_field() {
        let p = problem(r#"{"cartId":"a","cartId":"b","inner":{"postalCode":"1"}}"#);
        assert_eq!(
            (p.slug(), p.status, p.field.as_deref()),
            ("malformed-json", 400, Some("cartId"))
        );
        let p = problem(r#"{"cartId":"a","inner":{"postalCode":"1","postalCode":"2"}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("malformed-json", Some("inner.postalCode"))
        );
    }

    #[test]
    fn a_charset_other_than_utf8_is_refused() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("header"));
            check_media_type(&headers)
        };
        assert!(with("application/json").is_ok());
        assert!(with("application/json; charset=utf-8").is_ok());
        assert!(with("application/json;charset=\"UTF-8\"").is_ok());
        let p = with("application/json; charset=latin1").expect_err("latin1");
        assert_eq!(
            (p.slug(), p.status, p.field.as_deref()),
            ("unsupported-media-type", 415, Some("Content-Type"))
        );
        assert!(p.detail.contains("latin1"), "{}", p.detail);
    }

    #[test]
    fn a_header_read_once_may_be_sent_once() {
        let mut headers = HeaderMap::new();
        assert_eq!(single_header(&headers, "Idempotency-Key"), Ok(None));
        headers.append("idempotency-key", "a1".parse().expect("value"));
        assert!(
            single_header(&headers, "Idempotency-Key")
                .expect("one")
                .is_some()
        );
        headers.append("idempotency-key", "a2".parse().expect("value"));
        let p = single_header(&headers, "Idempotency-Key").expect_err("two");
        assert_eq!(
            (p.slug(), p.status, p.field.as_deref()),
            ("invalid-header", 400, Some("Idempotency-Key"))
        );
    }

    #[test]
    fn only_the_identity_content_coding_is_accepted() {
        let with = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_ENCODING, v.parse().expect("value"));
            }
            check_content_encoding(&headers)
        };
        assert_eq!(with(&[]), Ok(()));
        assert_eq!(with(&["identity"]), Ok(()));
        assert_eq!(with(&["Identity, identity"]), Ok(()));
        for bad in [&["gzip"][..], &["identity, br"], &["identity", "deflate"]] {
            let p = with(bad).expect_err("refused");
            assert_eq!(
                (p.slug(), p.status, p.field.as_deref()),
                ("unsupported-media-type", 415, Some("Content-Encoding")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let p = problem(r#"{"cartId":"a","color":"red","inner":{"postalCode":"1"}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("unknown-field", Some("color"))
        );
        let p = problem(r#"{"cartId":"a","inner":{"postalCode":"1","zip":"2"}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("unknown-field", Some("inner.zip"))
        );
    }

    #[test]
    fn a_wrong_type_is_named_and_explained() {
        let p = problem(r#"{"cartId":5,"inner":{"postalCode":"1"}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("wrong-type", Some("cartId"))
        );
        assert!(p.detail.contains("expected a string"), "{}", p.detail);
        let p = problem(r#"{"cartId":"a","inner":{"postalCode":"1","line2":[]}}"#);
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("wrong-type", Some("inner.line2"))
        );
        let p = problem("[1,2]");
        assert_eq!((p.slug(), p.field.as_deref()), ("wrong-type", None));
        assert_eq!(problem("[1,").slug(), "malformed-json");
        let p = parse_json::<WithNested>(br#"{"inner":["1", null]}"#).expect_err("array");
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("wrong-type", Some("inner"))
        );
        assert!(p.detail.contains("expected a JSON object"), "{}", p.detail);
        let p = parse_json::<WithNested>(br#"{"inner":{"postalCode":"1","x":1}}"#).expect_err("x");
        assert_eq!(
            (p.slug(), p.field.as_deref()),
            ("unknown-field", Some("inner.x"))
        );
        assert!(parse_json::<WithNested>(br#"{"inner":{"postalCode":"1"}}"#).is_ok());
    }
}
