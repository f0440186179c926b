//! Parsers of single option values (booleans, durations, ports, addresses) from the kernel command line, the environment and the TOML file.

use super::*;

pub(super) fn non_empty(value: &str) -> Result<&str> {
    if value.is_empty() {
        bail!("the value is empty");
    }
    Ok(value)
}

pub(super) fn parse_level(value: Option<&str>) -> Result<LogLevel> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    Ok(value.parse()?)
}

pub(super) fn parse_pipe_size(value: Option<&str>) -> Result<i32> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    match value.parse::<i32>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => bail!("{value:?} is not a pipe size between 0 and {}", i32::MAX),
    }
}

/// Ports are parsed as `i32` like upstream; values ≤ 0 are accepted and ignored.
pub(super) fn set_port(
    port: &mut u32,
    value: Option<&str>,
    token: &str,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let value = value.ok_or_else(|| anyhow!("expected exactly one '='"))?;
    let n: i32 = value
        .parse()
        .map_err(|_| anyhow!("{value:?} is not a port number"))?;
    keep_positive_port(port, i64::from(n), token, warnings);
    Ok(())
}

pub(super) fn keep_positive_port(port: &mut u32, n: i64, what: &str, warnings: &mut Vec<String>) {
    if n > 0 {
        *port = n as u32;
    } else if n < 0 {
        warnings.push(format!("{what}: negative port ignored"));
    }
}

/// Timeouts never fail startup: a bad value is ignored with a warning, 0 is ignored silently.
pub(super) fn set_timeout(
    timeout: &mut Duration,
    value: Option<&str>,
    token: &str,
    warnings: &mut Vec<String>,
) {
    match value
        .ok_or_else(|| "expected exactly one '='".to_string())
        .and_then(parse_duration)
    {
        Ok(d) if d.is_zero() => {}
        Ok(d) => *timeout = d,
        Err(e) => warnings.push(format!("{token}: {e}; keeping {timeout:?}")),
    }
}

/// Upstream's lenient boolean: `true`/`false` or an unsigned integer (non-zero = true).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        v => v.parse::<u64>().ok().map(|n| n != 0),
    }
}

/// A boolean option: anything unrecognised is false (upstream), with a warning (ours).
pub(super) fn cmdline_bool(value: Option<&str>, token: &str, warnings: &mut Vec<String>) -> bool {
    match value.and_then(parse_bool) {
        Some(b) => b,
        None => {
            warnings.push(format!("{token}: not a boolean, taken as false"));
            false
        }
    }
}

/// Parses a Go-style duration (`300ms`, `1h2m3.5s`, units ns/us/µs/ms/s/m/h) or a bare number
/// of seconds (`10`). Negative durations are rejected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration {text:?} is too large"));
    }
    let invalid =
        || format!("invalid duration {text:?} (expected e.g. 10s, 1m30s, 500ms or seconds)");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let end = digits_end(rest);
        let (int_part, after) = rest.split_at(end);
        rest = after;
        let mut frac_part = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let end = digits_end(after_dot);
            frac_part = &after_dot[..end];
            rest = &after_dot[end..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_end = rest
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (unit, after) = rest.split_at(unit_end);
        rest = after;
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let too_large = || format!("duration {text:?} is too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut part = int.checked_mul(scale).ok_or_else(too_large)?;
        // Fractions beyond nanosecond precision do not matter; 18 digits cannot overflow.
        let frac = &frac_part[..frac_part.len().min(18)];
        if !frac.is_empty() {
            let numerator: u128 = frac.parse().map_err(|_| invalid())?;
            part += numerator * scale / 10u128.pow(frac.len() as u32);
        }
        total = total.checked_add(part).ok_or_else(too_large)?;
    }
    let secs = u64::try_from(total / 1_000_000_000)
        .map_err(|_| format!("duration {text:?} is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Light absolute-URL check for `https_proxy`: `scheme://authority[/...]`, port numeric if
/// present. Returns the URL with a lower-case scheme and a `/` path when it had none.
pub fn normalize_url(url: &str) -> Result<String, String> {
    let bad = |why: &str| format!("{url:?} is not an absolute URL: {why}");
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected scheme://host"))?;
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(bad("invalid scheme"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains white space"));
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() {
        return Err(bad("no host"));
    }
    if let Some((host, port)) = host_port.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        if !port.contains(']') {
            if host.is_empty() {
                return Err(bad("no host"));
            }
            if !port.is_empty() && port.parse::<u16>().is_err() {
                return Err(bad("invalid port"));
            }
        }
    }
    let mut normalized = format!("{}://{}", scheme.to_ascii_lowercase(), rest);
    if authority_end == rest.len() {
        normalized.push('/');
    }
    Ok(normalized)
}

/// Checks a ttRPC listen address: `vsock://CID:PORT` (CID `-1` = any), `unix:///abs/path`,
/// `unix://@abstract` or `tcp://host:port`.
pub fn validate_server_addr(addr: &str) -> Result<()> {
    const FORMS: &str = "vsock://CID:PORT, unix:///absolute/path, unix://@name or tcp://host:port";
    let invalid =
        |why: String| anyhow!("invalid server address {addr:?}: {why} (expected {FORMS})");
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Err(invalid("no scheme".to_string()));
    };
    match scheme {
        "vsock" => {
            let (cid, port) = rest
                .split_once(':')
                .filter(|(_, port)| !port.contains(':'))
                .ok_or_else(|| invalid("expected CID:PORT".to_string()))?;
            if cid != "-1" && cid.parse::<u32>().is_err() {
                return Err(invalid(format!("{cid:?} is not a vsock CID")));
            }
            if port.parse::<u32>().is_err() {
                return Err(invalid(format!("{port:?} is not a vsock port")));
            }
        }
        "unix" => {
            if let Some(name) = rest.strip_prefix('@') {
                if name.is_empty() {
                    return Err(invalid("empty abstract socket name".to_string()));
                }
            } else if !rest.starts_with('/') || rest.len() < 2 {
                return Err(invalid("the socket path must be absolute".to_string()));
            }
        }
        "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| invalid("expected host:port".to_string()))?;
            if host.is_empty() {
                return Err(invalid("empty host".to_string()));
            }
            if port.parse::<u16>().is_err() {
                return Err(invalid(format!("{port:?} is not a TCP port")));
            }
        }
        other => return Err(invalid(format!("unsupported scheme {other:?}"))),
    }
    Ok(())
}

pub(super) fn toml_bool(key: &str, value: &toml::Value) -> Result<bool> {
    value
        .as_bool()
        .ok_or_else(|| anyhow!("key {key} must be a boolean"))
}

pub(super) fn toml_str<'a>(key: &str, value: &'a toml::Value) -> Result<&'a str> {
    value
        .as_str()
        .ok_or_else(|| anyhow!("key {key} must be a string"))
}

pub(super) fn toml_int(key: &str, value: &toml::Value) -> Result<i64> {
    value
        .as_integer()
        .ok_or_else(|| anyhow!("key {key} must be an integer"))
}

pub(super) fn toml_path(key: &str, value: &toml::Value) -> Result<PathBuf> {
    let s = toml_str(key, value)?;
    if !s.starts_with('/') {
        bail!("key {key} must be an absolute path, got {s:?}");
    }
    Ok(PathBuf::from(s))
}

pub(super) fn toml_port(
    port: &mut u32,
    key: &str,
    value: &toml::Value,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let n = toml_int(key, value)?;
    if n > i64::from(i32::MAX) {
        bail!("key {key}: {n} is not a port number");
    }
    keep_positive_port(port, n, key, warnings);
    Ok(())
}

/// A timeout in the file: a duration string, an integer of seconds, or `{ secs, nanos }` /
/// `[secs, nanos]` (serde's `Duration` forms). Bad values are ignored with a warning.
pub(super) fn toml_timeout(
    timeout: &mut Duration,
    key: &str,
    value: &toml::Value,
    warnings: &mut Vec<String>,
) {
    fn from_parts(
        secs: Option<&toml::Value>,
        nanos: Option<&toml::Value>,
    ) -> Result<Duration, String> {
        let secs = secs
            .and_then(toml::Value::as_integer)
            .and_then(|s| u64::try_from(s).ok())
            .ok_or("secs must be a non-negative integer")?;
        let nanos = match nanos {
            None => 0,
            Some(n) => n
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n < 1_000_000_000)
                .ok_or("nanos must be an integer below 1000000000")?,
        };
        Ok(Duration::new(secs, nanos))
    }
    let parsed = match value {
        toml::Value::String(s) => parse_duration(s),
        toml::Value::Integer(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| format!("negative duration {n}")),
        toml::Value::Table(t) => from_parts(t.get("secs"), t.get("nanos")),
        toml::Value::Array(a) if a.len() == 2 => from_parts(a.first(), a.get(1)),
        _ => Err(
            "expected a duration string such as \"10s\", seconds, or { secs, nanos }".to_string(),
        ),
    };
    match parsed {
        Ok(d) if d.is_zero() => {}
        Ok(d) => *timeout = d,
        Err(e) => warnings.push(format!("configuration key {key}: {e}; keeping {timeout:?}")),
    }
}
