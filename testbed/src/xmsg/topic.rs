//! Topics and ERSAP's canonical names.
//!
//! A topic is a string of `:`-separated parts such as `dpe:10.1.1.10_java` or
//! `dpeAlive:session:10.1.1.10_java`. Subscriptions match by byte prefix, as ZeroMQ matches
//! them, so a subscription to `dpeAlive:session:` receives the reports of every DPE of that
//! session.
//!
//! A DPE is named `<ipv4>_<lang>` when its proxy listens on the language's default port and
//! `<ipv4>%<port>_<lang>` otherwise; a container is `<dpe>:<container>` and a service
//! `<dpe>:<container>:<engine>`.

use std::fmt;
use std::net::Ipv4Addr;

/// Separator of the parts of a topic.
pub const SEPARATOR: char = ':';

/// Returns whether a subscription to `subscription` receives a message on `topic`.
pub fn matches(subscription: &str, topic: &str) -> bool {
    topic.as_bytes().starts_with(subscription.as_bytes())
}

/// Joins topic parts with `:`.
pub fn join(parts: &[&str]) -> String {
    parts.join(":")
}

/// Default proxy port of a DPE written in `lang` (`java`, `cpp` or `python`).
pub fn default_port(lang: &str) -> Option<u16> {
    match lang {
        "java" => Some(7771),
        "cpp" => Some(7781),
        "python" => Some(7791),
        _ => None,
    }
}

/// The parts of a canonical DPE name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DpeName {
    pub host: Ipv4Addr,
    /// Base port of the DPE's proxy.
    pub port: u16,
    pub lang: String,
}

/// A DPE name that does not have ERSAP's canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DPE name `{name}`: {reason} (expected `<ipv4>_<lang>` or `<ipv4>%<port>_<lang>`)")]
pub struct InvalidName {
    pub name: String,
    pub reason: &'static str,
}

impl DpeName {
    pub fn new(host: Ipv4Addr, port: u16, lang: &str) -> DpeName {
        DpeName { host, port, lang: lang.to_owned() }
    }

    /// Parses `<ipv4>_<lang>` or `<ipv4>%<port>_<lang>`.
    pub fn parse(name: &str) -> Result<DpeName, InvalidName> {
        let invalid = |reason| InvalidName { name: name.to_owned(), reason };
        let (address, lang) = name.rsplit_once('_').ok_or_else(|| invalid("no `_<lang>`"))?;
        let (host, port) = match address.split_once('%') {
            Some((host, port)) => {
                (host, Some(port.parse::<u16>().map_err(|_| invalid("the port is not a number"))?))
            }
            None => (address, None),
        };
        let host: Ipv4Addr =
            host.parse().map_err(|_| invalid("the host is not an IPv4 address"))?;
        let port = match port {
            Some(port) => port,
            None => default_port(lang).ok_or_else(|| invalid("unknown language"))?,
        };
        Ok(DpeName { host, port, lang: lang.to_owned() })
    }

    /// Topic on which the DPE receives its requests: `dpe:<name>`.
    pub fn request_topic(&self) -> String {
        format!("dpe:{self}")
    }
}

impl fmt::Display for DpeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if default_port(&self.lang) == Some(self.port) {
            write!(f, "{}_{}", self.host, self.lang)
        } else {
            write!(f, "{}%{}_{}", self.host, self.port, self.lang)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpe_names_round_trip() {
        let cases = [
            ("127.0.0.1_java", 7771, "java"),
            ("127.0.0.1_cpp", 7781, "cpp"),
            ("10.1.1.10%9000_java", 9000, "java"),
            ("127.0.0.1%7781_java", 7781, "java"),
        ];
        for (text, port, lang) in cases {
            let name = DpeName::parse(text).expect(text);
            assert_eq!(name.port, port, "{text}");
            assert_eq!(name.lang, lang, "{text}");
            assert_eq!(name.to_string(), text);
        }
    }

    #[test]
    fn default_port_is_left_out_of_names() {
        let name = DpeName::new(Ipv4Addr::LOCALHOST, 7791, "python");
        assert_eq!(name.to_string(), "127.0.0.1_python");
        assert_eq!(name.request_topic(), "dpe:127.0.0.1_python");
    }

    #[test]
    fn invalid_dpe_names_are_rejected() {
        for text in ["127.0.0.1", "host_java", "127.0.0.1%x_java", "127.0.0.1_rust", ""] {
            assert!(DpeName::parse(text).is_err(), "{text} should be rejected");
        }
    }

    #[test]
    fn subscriptions_match_by_prefix() {
        assert!(matches("dpeAlive:s:", "dpeAlive:s:127.0.0.1_java"));
        assert!(matches("", "anything"));
        assert!(matches("xmsg:control", "xmsg:control:con"));
        assert!(!matches("dpe:127.0.0.1_java", "dpe:127.0.0.1_cpp"));
        assert_eq!(join(&["dpeReport", "s", "d"]), "dpeReport:s:d");
    }
}
