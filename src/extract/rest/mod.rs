//! The declarative REST source: a vendor API described in `ferry.toml`
//! (base URL, auth, per-stream path, records path, pagination, incremental
//! cursor, parent → child), fetched through the shared HTTP layer (rate
//! limit, retries, backoff, `Retry-After`).

pub mod config;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::config::{Pagination, RestStream, SourceSpec};
use super::{Source, StreamRun, at_path, cursor_after, text};
use crate::error::{Error, Result};
use crate::http::{Call, CallError, Client, RateLimiter, Vendor};

/// Generic rate-limit conventions (`X-RateLimit-*`, no daily budget in the body).
pub const VENDOR: Vendor = Vendor {
    name: "rest",
    max_header: "x-ratelimit-limit",
    remaining_header: "x-ratelimit-remaining",
    daily_remaining_header: "x-ratelimit-daily-remaining",
    is_daily: |_| false,
    daily_remaining: |_| None,
    instance_url_from_token: false,
};

pub struct RestSource {
    name: String,
    base: String,
    client: Client,
    streams: Vec<RestStream>,
}

impl RestSource {
    pub fn new(spec: &SourceSpec) -> Result<RestSource> {
        let SourceSpec::Rest {
            name,
            url,
            auth,
            requests_per_second,
            streams,
        } = spec
        else {
            return Err(Error::Internal("not a REST source".into()));
        };
        let limiter = Arc::new(match requests_per_second {
            Some(n) => RateLimiter::new(*n, Duration::from_secs(1), None),
            None => RateLimiter::new(1_000_000, Duration::from_secs(1), None),
        });
        let client = Client::new(url, auth.clone(), VENDOR, limiter, Default::default())
            .map_err(Error::Input)?;
        Ok(RestSource {
            name: name.clone(),
            base: url.trim_end_matches('/').to_string(),
            client,
            streams: streams.clone(),
        })
    }

    fn stream(&self, name: &str) -> Result<&RestStream> {
        self.streams
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| Error::Input(format!("source {} has no stream {name}", self.name)))
    }

    fn fail(&self, e: CallError) -> Error {
        e.into_error(
            &self.name,
            &format!("check auth in [sources.{}]", self.name),
        )
    }

    /// Fetch every page of one endpoint, pushing records; returns the largest
    /// incremental cursor seen.
    async fn pages(
        &self,
        s: &RestStream,
        path: &str,
        cursor: Option<&Value>,
        run: &mut StreamRun<'_>,
        best: Option<Value>,
    ) -> Result<Option<Value>> {
        let best = self.read_pages(s, path, cursor, run, best).await?;
        // Pages decoded behind the fetching hold cursor values too.
        Ok(match run.decoded_cursor().await? {
            Some(c) if best.as_ref().is_none_or(|b| cursor_after(&c, b)) => Some(c),
            _ => best,
        })
    }

    async fn read_pages(
        &self,
        s: &RestStream,
        path: &str,
        cursor: Option<&Value>,
        run: &mut StreamRun<'_>,
        mut best: Option<Value>,
    ) -> Result<Option<Value>> {
        // The records are decoded from their text straight into columns,
        // unless a paging path reads inside them.
        let split = !reads_inside(&s.records, &s.pagination);
        let cursor_field = s.incremental.as_ref().map(|i| i.cursor_field.as_str());
        let mut params: BTreeMap<String, String> = s.params.clone();
        if let Some(inc) = &s.incremental {
            let value = cursor.map(text).or_else(|| inc.start.clone());
            if let Some(v) = value {
                let v = match &inc.template {
                    Some(t) => t.replace("{cursor}", &v),
                    None => v,
                };
                params.insert(inc.param.clone(), v);
            }
        }
        let mut page_no = match &s.pagination {
            Pagination::Page { start, .. } => *start,
            _ => 0,
        };
        let mut offset = 0usize;
        let mut next: Option<String> = None;
        let mut guard = 0u64;
        // The previous page's records, to notice an API that ignores the
        // paging parameter (or clamps it) and answers the same page again.
        let mut previous_page: Option<u64> = None;
        let mut pages_read = 0u64;
        // The last page was shorter than asked: the next may be past the end.
        let mut last_short = false;
        loop {
            guard += 1;
            if guard > 10_000_000 {
                return Err(Error::Input(format!(
                    "{}: more than 10M pages; stopping",
                    s.name
                )));
            }
            let mut q = params.clone();
            match &s.pagination {
                Pagination::Cursor {
                    param,
                    limit_param,
                    limit,
                    ..
                } => {
                    if let (Some(lp), Some(l)) = (limit_param, limit) {
                        q.insert(lp.clone(), l.to_string());
                    }
                    if let Some(n) = &next {
                        q.insert(param.clone(), n.clone());
                    }
                }
                Pagination::Offset {
                    param,
                    limit_param,
                    limit,
                } => {
                    q.insert(param.clone(), offset.to_string());
                    q.insert(limit_param.clone(), limit.to_string());
                }
                Pagination::Page {
                    param,
                    size_param,
                    size,
                    ..
                } => {
                    q.insert(param.clone(), page_no.to_string());
                    if let (Some(sp), Some(n)) = (size_param, size) {
                        q.insert(sp.clone(), n.to_string());
                    }
                }
                _ => {}
            }
            let url = match (&s.pagination, &next) {
                // Resolved against the page it came from, as a browser would;
                // the client then refuses one on another origin.
                (Pagination::NextUrl { .. } | Pagination::LinkHeader, Some(n)) => n.clone(),
                _ => with_query(path, &q),
            };
            let request = resolve(&self.base, &url);
            let mut call = Call::get(url.clone());
            if split {
                call = call.records_at(&s.records);
            }
            let reply = match self.client.send(call).await {
                Ok(r) => r,
                // Some offset APIs answer a request past the last record
                // with a 4xx instead of an empty page: after a short page,
                // that is the end, not a failure.
                Err(CallError::Rejected { status, .. })
                    if last_short
                        && (400..500).contains(&status)
                        && matches!(s.pagination, Pagination::Offset { .. }) =>
                {
                    return Ok(best);
                }
                Err(e) => return Err(self.fail(e)),
            };
            let mut reply = reply;
            let offset_like = matches!(
                s.pagination,
                Pagination::Offset { .. } | Pagination::Page { .. }
            );
            match reply.records.take() {
                Some(text) if text.first() == Some(&b'[') => {
                    let n = if offset_like {
                        let decoded = run.decode_now(text.clone(), cursor_field).await?;
                        let n = decoded.records;
                        pages_read += 1;
                        if n > 0 {
                            let digest = text_digest(&text)?;
                            if previous_page == Some(digest) {
                                return self.repeated_page(s, n, pages_read).map(|()| best);
                            }
                            previous_page = Some(digest);
                        }
                        run.push_decoded(decoded, reply.bytes).await?;
                        n
                    } else {
                        pages_read += 1;
                        run.push_json(text, reply.bytes, cursor_field).await?;
                        0
                    };
                    if let Pagination::Offset { limit, .. } = &s.pagination {
                        last_short = n < *limit;
                    }
                    let previous = next.take();
                    next = self.next_page(s, &reply, &request, n, &mut offset, &mut page_no);
                    if next.is_none() {
                        return Ok(best);
                    }
                    self.same_next_twice(s, &previous, &next)?;
                    continue;
                }
                // Not an array: parsed, to be told apart below.
                Some(text) => {
                    let v: Value = serde_json::from_slice(&text).map_err(|e| Error::Vendor {
                        vendor: self.name.clone(),
                        message: format!(
                            "{}: {}: the value at {:?} is not valid JSON ({e}); nothing of that page was landed",
                            s.name,
                            url.split('?').next().unwrap_or_default(),
                            s.records
                        ),
                        retryable: true,
                    })?;
                    put_at(&mut reply.body, &s.records, v);
                }
                None => {}
            }
            let records = match take_records(&mut reply.body, &s.records, &s.pagination) {
                Some(Value::Array(a)) => a,
                Some(Value::Null) | None if !s.records.is_empty() => Vec::new(),
                Some(other) => {
                    let other = &other;
                    return Err(Error::Input(format!(
                        "{}.{}: {}: expected an array at {:?}, found {}",
                        self.name,
                        s.name,
                        // Without the query string: it may carry a key.
                        url.split('?').next().unwrap_or_default(),
                        s.records,
                        kind(other)
                    )));
                }
                None => Vec::new(),
            };
            let n = records.len();
            pages_read += 1;
            if offset_like && n > 0 {
                let digest = page_digest(&records);
                if previous_page == Some(digest) {
                    return self.repeated_page(s, n, pages_read).map(|()| best);
                }
                previous_page = Some(digest);
            }
            if let Pagination::Offset { limit, .. } = &s.pagination {
                last_short = n < *limit;
            }
            if let Some(inc) = &s.incremental {
                for r in &records {
                    if let Some(v) = at_path(r, &inc.cursor_field).filter(|v| !v.is_null())
                        && best.as_ref().is_none_or(|b| cursor_after(v, b))
                    {
                        best = Some(v.clone());
                    }
                }
            }
            run.push(records, reply.bytes).await?;
            let previous = next.take();
            next = self.next_page(s, &reply, &request, n, &mut offset, &mut page_no);
            if next.is_none() {
                return Ok(best);
            }
            self.same_next_twice(s, &previous, &next)?;
        }
    }

    /// A page equal to the previous one (offset or page paging): an error
    /// when the API ignores the paging parameter, else (`Ok`) the end.
    fn repeated_page(&self, s: &RestStream, n: usize, pages_read: u64) -> Result<()> {
        let asked = match &s.pagination {
            Pagination::Offset { limit, .. } => Some(*limit),
            Pagination::Page { size, .. } => *size,
            _ => None,
        };
        // Offset paging past the end answers an empty page, so a
        // repeat means the API ignores `offset` (and may cap
        // `limit`, so the page can be short): the rest is out of
        // reach. Page paging: the second page equal to a full
        // first one means the API ignores `page`; later, or a
        // short page, means it clamps to its last page, which is
        // read.
        let offset = matches!(s.pagination, Pagination::Offset { .. });
        if offset || (pages_read == 2 && asked.is_some_and(|a| n >= a)) {
            return Err(Error::Vendor {
                vendor: self.name.clone(),
                message: format!(
                    "{}: the API answered a page with the previous page's records: it ignores the paging parameter, so ferry cannot reach the rest. Check pagination in [sources.{}.streams.{}]",
                    s.name, self.name, s.name
                ),
                retryable: false,
            });
        }
        Ok(())
    }

    /// The next page to ask for after a reply of `n` records, if any.
    fn next_page(
        &self,
        s: &RestStream,
        reply: &crate::http::Reply,
        request: &str,
        n: usize,
        offset: &mut usize,
        page_no: &mut usize,
    ) -> Option<String> {
        match &s.pagination {
            Pagination::None => None,
            Pagination::Cursor { cursor_path, .. } => at_path(&reply.body, cursor_path)
                .filter(|v| !v.is_null() && !text(v).is_empty())
                .map(text),
            Pagination::NextUrl { path } => at_path(&reply.body, path)
                .filter(|v| !v.is_null() && !text(v).is_empty())
                .map(|v| join(request, &text(v))),
            Pagination::LinkHeader => reply
                .headers
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|l| join(request, &l)),
            // A short page is not the end (APIs cap `limit` below what
            // was asked): only an empty page is.
            Pagination::Offset { .. } => {
                *offset += n;
                (n > 0).then(String::new)
            }
            Pagination::Page {
                total_pages_path, ..
            } => {
                let last = total_pages_path
                    .as_ref()
                    .and_then(|p| at_path(&reply.body, p))
                    .and_then(Value::as_u64)
                    .is_some_and(|total| *page_no as u64 >= total);
                *page_no += 1;
                (n > 0 && !last).then(String::new)
            }
        }
    }

    /// An API that hands back the cursor (or link) it was just given
    /// would page forever.
    fn same_next_twice(
        &self,
        s: &RestStream,
        previous: &Option<String>,
        next: &Option<String>,
    ) -> Result<()> {
        if previous.is_some() && previous == next && !next.as_deref().is_some_and(str::is_empty) {
            return Err(Error::Input(format!(
                "{}.{}: the API returned the same next page ({}) twice; check pagination in [sources.{}.streams.{}]",
                self.name,
                s.name,
                next.as_deref()
                    .unwrap_or_default()
                    .split('?')
                    .next()
                    .unwrap_or_default(),
                self.name,
                s.name
            )));
        }
        Ok(())
    }

    /// Values of `key` in the parent stream's landed rows.
    async fn parent_keys(
        &self,
        run: &StreamRun<'_>,
        parent: &str,
        key: &str,
    ) -> Result<Vec<String>> {
        let ctx = crate::engine::session(run.lake()).await?;
        let table = format!("\"{}\".\"{}\"", self.name, parent);
        let column = key.replace('.', "__");
        let sql = format!(
            "select distinct cast(\"{column}\" as varchar) as k from {table} where \"{column}\" is not null order by 1"
        );
        let batches = ctx.sql(&sql).await.map_err(|e| {
            Error::Input(format!(
                "{}: cannot read parent keys {key:?} from {}.{parent}: {e}",
                self.name, self.name
            ))
        })?;
        let mut keys = Vec::new();
        for b in batches.collect().await? {
            let col = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
            let a = arrow::array::AsArray::as_string::<i32>(&col);
            for i in 0..arrow::array::Array::len(a) {
                keys.push(a.value(i).to_string());
            }
        }
        Ok(keys)
    }
}

/// The page's records, moved out of the reply (a page is parsed once and
/// not copied), unless a paging path reads inside them.
fn take_records(body: &mut Value, path: &str, pagination: &Pagination) -> Option<Value> {
    if reads_inside(path, pagination) {
        return at_path(body, path).cloned();
    }
    if path.is_empty() {
        return Some(body.take());
    }
    let mut v = body;
    for k in path.split('.') {
        v = match v {
            Value::Object(m) => m.get_mut(k)?,
            Value::Array(a) => a.get_mut(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v.take())
}

/// Whether a paging path reads inside the records (or the records are the
/// whole body).
fn reads_inside(path: &str, pagination: &Pagination) -> bool {
    let inside = |p: &str| path.is_empty() || p.starts_with(&format!("{path}."));
    match pagination {
        Pagination::Cursor { cursor_path, .. } => inside(cursor_path),
        Pagination::NextUrl { path } => inside(path),
        Pagination::Page {
            total_pages_path: Some(p),
            ..
        } => inside(p),
        _ => false,
    }
}

/// Put `v` at a dotted path of object keys (where the client left a null
/// for records it did not parse).
fn put_at(body: &mut Value, path: &str, v: Value) {
    if path.is_empty() {
        *body = v;
        return;
    }
    let mut at = body;
    for k in path.split('.') {
        match at {
            Value::Object(m) => match m.get_mut(k) {
                Some(next) => at = next,
                None => return,
            },
            _ => return,
        }
    }
    *at = v;
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The absolute URL of a request path (a path under the source's URL, or
/// an absolute URL already).
fn resolve(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        path.to_string()
    } else {
        format!("{base}{path}")
    }
}

/// A next link (absolute, root-relative or relative) resolved against the
/// URL of the page that gave it. An unparsable one is kept as given: the
/// client refuses anything that is not on the vendor's origin.
fn join(page: &str, link: &str) -> String {
    match url::Url::parse(page).and_then(|u| u.join(link.trim())) {
        Ok(u) => u.to_string(),
        Err(_) => link.to_string(),
    }
}

/// [`page_digest`] of records given as text (already decoded once, so
/// they parse): the same page sent again with other spacing or key order
/// is still the same page.
fn text_digest(text: &[u8]) -> Result<u64> {
    use std::hash::{Hash, Hasher};
    let records: Vec<&serde_json::value::RawValue> = serde_json::from_slice(text)
        .map_err(|e| Error::Internal(format!("a decoded page does not split again: {e}")))?;
    // As `page_digest` of the parsed records; a record that is not valid
    // JSON inside (it went to quarantine) is taken as sent.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in records {
        match serde_json::from_str::<Value>(r.get()) {
            Ok(v) => v.to_string().hash(&mut h),
            Err(_) => r.get().hash(&mut h),
        }
    }
    Ok(h.finish())
}

fn page_digest(records: &[Value]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for r in records {
        r.to_string().hash(&mut h);
    }
    h.finish()
}

/// The cursor to save: the largest value seen, but for a time cursor no
/// later than `start - margin` (see `Incremental::lag_margin_seconds`).
pub fn capped_cursor(best: Value, start: chrono::DateTime<chrono::Utc>, margin: u64) -> Value {
    // A margin too large for a date (fuzzing found `u64::MAX`) caps at the
    // earliest time chrono knows: everything is read again, nothing skipped.
    let cap = i64::try_from(margin)
        .ok()
        .and_then(chrono::TimeDelta::try_seconds)
        .and_then(|d| start.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    match &best {
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) if t > cap => Value::String(
                cap.with_timezone(&t.timezone())
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, s.ends_with('Z')),
            ),
            _ => best,
        },
        // A number is a time only if it reads as one within ten years of
        // the run, in milliseconds or seconds; anything else (a sequence
        // number, an id) is kept as seen.
        Value::Number(n) => match n.as_i64() {
            Some(v) => {
                let decade_ms = 10 * 365 * 86_400_000i64;
                let now_ms = start.timestamp_millis();
                let near = |ms: i64| ms.checked_sub(now_ms).is_some_and(|d| d.abs() <= decade_ms);
                if near(v) {
                    Value::from(v.min(cap.timestamp_millis()))
                } else if v.checked_mul(1000).is_some_and(near) {
                    Value::from(v.min(cap.timestamp()))
                } else {
                    best
                }
            }
            None => best,
        },
        _ => best,
    }
}

fn with_query(path: &str, q: &BTreeMap<String, String>) -> String {
    if q.is_empty() {
        return path.to_string();
    }
    let qs: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(q.iter())
        .finish();
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{qs}")
}

/// The `rel="next"` URL of a `Link` header.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            p.trim()
                .replace(' ', "")
                .eq_ignore_ascii_case("rel=\"next\"")
                || p.trim().eq_ignore_ascii_case("rel=next")
        });
        is_next.then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[async_trait]
impl Source for RestSource {
    fn streams(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    async fn extract(&self, stream: &str, run: &mut StreamRun<'_>) -> Result<Option<Value>> {
        let s = self.stream(stream)?.clone();
        let started = chrono::Utc::now();
        let cursor = run.cursor().cloned();
        let best = match &s.parent {
            None => {
                self.pages(&s, &s.path, cursor.as_ref(), run, cursor.clone())
                    .await?
            }
            Some(p) => {
                let mut best = cursor.clone();
                for k in self.parent_keys(run, &p.stream, &p.key).await? {
                    let encoded: String =
                        url::form_urlencoded::byte_serialize(k.as_bytes()).collect();
                    let path = s.path.replace(&format!("{{{}}}", p.key), &encoded);
                    best = self.pages(&s, &path, cursor.as_ref(), run, best).await?;
                }
                best
            }
        };
        Ok(match &s.incremental {
            None => None,
            // Never behind the cursor this run started from.
            Some(inc) => best.map(|b| {
                let capped = capped_cursor(b, started, inc.lag_margin_seconds);
                match &cursor {
                    Some(c) if cursor_after(c, &capped) => c.clone(),
                    _ => capped,
                }
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(
                "<https://api.x.io/items?page=3>; rel=\"next\", <https://api.x.io/items?page=1>; rel=\"first\""
            ),
            Some("https://api.x.io/items?page=3".into())
        );
        assert_eq!(
            next_link("<https://api.x.io/items?page=1>; rel=\"prev\""),
            None
        );
        assert_eq!(next_link(""), None);
    }
}
