//! Parsing of command arguments: the `json://`, `file://` and `key=value` forms, durations,
//! signal names, byte strings and the shell-like word splitting used for `args='...'`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{Map, Value};

/// The argument part of one command, in one of the accepted forms.
#[derive(Debug, Clone, PartialEq)]
pub enum ArgForm {
    /// No argument: the request's defaults.
    Empty,
    /// `json://{..}` or `file:///path`: a (partial) request as a JSON object.
    Json(Map<String, Value>),
    /// `key=value ...` pairs, in the order given.
    Pairs(Vec<(String, String)>),
}

/// Parses the argument text of a command (everything after the command name).
pub fn parse_form(text: &str) -> Result<ArgForm> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(ArgForm::Empty);
    }
    if let Some(json) = text.strip_prefix("json://") {
        return Ok(ArgForm::Json(parse_json_object(
            json,
            "the json:// argument",
        )?));
    }
    if let Some(path) = text.strip_prefix("file://") {
        let content = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the request file {path}"))?;
        return Ok(ArgForm::Json(parse_json_object(
            &content,
            &format!("the request file {path}"),
        )?));
    }
    let mut pairs = Vec::new();
    for word in split_words(text)? {
        let Some((key, value)) = word.split_once('=') else {
            bail!(
                "unexpected argument {word:?}: expected key=value pairs, json://{{...}} or file:///path.json"
            );
        };
        if key.is_empty() {
            bail!("the argument {word:?} has no key before '='");
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(ArgForm::Pairs(pairs))
}

/// Parses `text` as a JSON object, with an error that says where the text came from.
pub fn parse_json_object(text: &str, what: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => bail!("{what} must be a JSON object, not {}", json_kind(&other)),
        Err(e) => bail!("{what} is not valid JSON: {e}"),
    }
}

/// A short name of a JSON value's kind, for messages.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Splits `text` into words like a POSIX shell would: blanks separate words, single quotes
/// keep everything literally, double quotes keep blanks and honour `\"` and `\\`, a backslash
/// outside quotes escapes the next character.
pub fn split_words(text: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => bail!("unterminated single quote in {text:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => bail!("unterminated double quote in {text:?}"),
                        },
                        Some(c) => cur.push(c),
                        None => bail!("unterminated double quote in {text:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => bail!("trailing backslash in {text:?}"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// Parses a human duration: `0`, `10s`, `500ms`, `1m30s`, `2h`, `100us`, `5ns`; a bare number
/// means seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let t = text.trim();
    if t.is_empty() {
        bail!("empty duration");
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if digits == 0 {
            bail!("invalid duration {text:?}: expected a number before the unit (e.g. 10s, 500ms, 1m)");
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| anyhow!("invalid duration {text:?}"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = rest[..unit_len].trim();
        rest = &rest[unit_len..];
        let nanos_per_unit: f64 = match unit {
            "ns" | "nsec" => 1.0,
            "us" | "µs" | "usec" => 1e3,
            "ms" | "msec" => 1e6,
            "s" | "sec" | "secs" | "second" | "seconds" => 1e9,
            "m" | "min" | "mins" | "minute" | "minutes" => 60e9,
            "h" | "hr" | "hour" | "hours" => 3600e9,
            "d" | "day" | "days" => 86400e9,
            "" => bail!("invalid duration {text:?}: a unit is needed after {number} (ns, us, ms, s, m, h, d)"),
            u => bail!("invalid duration {text:?}: unknown unit {u:?} (ns, us, ms, s, m, h, d)"),
        };
        total += Duration::from_nanos((number * nanos_per_unit).round() as u64);
    }
    Ok(total)
}

const SIGNALS: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Parses a signal: a number 0–255, or a name with or without `SIG`, in any case.
pub fn parse_signal(text: &str) -> Result<u32> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u32>() {
        if n > 255 {
            bail!("signal number {n} is out of range (0-255)");
        }
        return Ok(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, num)| *num as u32)
        .ok_or_else(|| {
            anyhow!("unknown signal {t:?} (use a number or a name such as SIGKILL, TERM, hup)")
        })
}

/// Converts a bytes argument: `hex:<hex digits>` or plain text (taken as UTF-8 bytes).
pub fn parse_bytes(text: &str) -> Result<Vec<u8>> {
    let Some(hex) = text.strip_prefix("hex:") else {
        return Ok(text.as_bytes().to_vec());
    };
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    if !hex.len().is_multiple_of(2) {
        bail!("the hex value {hex:?} has an odd number of digits");
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| anyhow!("{:?} is not a hex byte", &hex[i..i + 2]))
        })
        .collect()
}

/// Parses a boolean: true/false, yes/no, 1/0, on/off.
pub fn parse_bool(text: &str) -> Result<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" | "y" => Ok(true),
        "false" | "no" | "0" | "off" | "n" | "" => Ok(false),
        _ => bail!("{text:?} is not a boolean (true or false)"),
    }
}

/// A random 64-hex-digit id, as container engines use.
pub fn random_id() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !filled {
        // Fall back on time and pid; uniqueness, not secrecy, is what matters here.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed.rotate_left(i as u32 * 7) & 0xff) as u8;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms() {
        assert_eq!(parse_form("  ").unwrap(), ArgForm::Empty);
        assert_eq!(
            parse_form(r#"json://{"container_id": "a b"}"#).unwrap(),
            ArgForm::Json(json!({"container_id": "a b"}).as_object().unwrap().clone())
        );
        assert_eq!(
            parse_form(r#"cid=c1 args='sh -c "echo hi"' data=x=y"#).unwrap(),
            ArgForm::Pairs(vec![
                ("cid".into(), "c1".into()),
                ("args".into(), r#"sh -c "echo hi""#.into()),
                ("data".into(), "x=y".into()),
            ])
        );
        let err = parse_form("json://{bad").unwrap_err().to_string();
        assert!(err.contains("not valid JSON"), "{err}");
        let err = parse_form("json://[1]").unwrap_err().to_string();
        assert!(err.contains("must be a JSON object"), "{err}");
        assert!(parse_form("file:///nonexistent.json").is_err());
        let err = parse_form("c1").unwrap_err().to_string();
        assert!(err.contains("expected key=value"), "{err}");
    }

    #[test]
    fn file_form() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        std::fs::write(&p, r#"{"len": 5}"#).unwrap();
        let form = parse_form(&format!("file://{}", p.display())).unwrap();
        assert_eq!(
            form,
            ArgForm::Json(json!({"len": 5}).as_object().unwrap().clone())
        );
    }

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"sh -c "echo \"hi\" there" 'a b' c\ d"#).unwrap(),
            ["sh", "-c", r#"echo "hi" there"#, "a b", "c d"]
        );
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("'open").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("Term").unwrap(), 15);
        assert_eq!(parse_signal("0").unwrap(), 0);
        assert_eq!(parse_signal("64").unwrap(), 64);
        assert!(parse_signal("256").is_err());
        assert!(parse_signal("SIGFOO").is_err());
    }

    #[test]
    fn bytes() {
        assert_eq!(parse_bytes("hi\n").unwrap(), b"hi\n");
        assert_eq!(parse_bytes("hex:68690a").unwrap(), b"hi\n");
        assert!(parse_bytes("hex:6").is_err());
        assert!(parse_bytes("hex:zz").is_err());
    }

    #[test]
    fn ids() {
        let a = random_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }
}
