//! Microsoft Autodiscover: the POX request and response (CLIENTS.md B.1, B.2) and the JSON v2
//! redirect stub (B.5). No I/O here; `routes` decides status codes.

use std::fmt::Write;

use crate::ClientPorts;
use crate::xml::escape;

/// Namespace of an Outlook POX request (CLIENTS.md B.1). Requests are accepted without it too
/// (clients are not strict about it, and nothing else could be meant).
#[cfg(test)]
pub(crate) const OUTLOOK_REQUEST_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006";
/// Namespace of an ActiveSync (mobilesync) request: answered with an error, Tessera has no
/// ActiveSync.
pub(crate) const MOBILESYNC_REQUEST_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/requestschema/2006";
/// Outer namespace of every response.
const RESPONSE_NS: &str = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006";
/// Namespace of the Outlook `Response` element.
const OUTLOOK_RESPONSE_NS: &str =
    "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a";

/// A parsed POX request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// An Outlook (or Thunderbird) request for this address, as sent (not yet validated).
    Outlook { email: String },
    /// An ActiveSync request (namespace or acceptable response schema says mobilesync).
    MobileSync,
}

/// Why a request body was refused (answered 400 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("not an Autodiscover request (root element {0})")]
    NotAutodiscover(String),
    #[error("no Request/EMailAddress element")]
    MissingEmail,
}

/// Parses a POX request body. DTDs are refused (roxmltree's default), so entity expansion
/// attacks fail as malformed XML.
pub(crate) fn parse_request(body: &[u8]) -> Result<Request, RequestError> {
    let text =
        std::str::from_utf8(body).map_err(|_| RequestError::Malformed("not UTF-8".to_owned()))?;
    let doc =
        roxmltree::Document::parse(text).map_err(|e| RequestError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    let name = root.tag_name();
    if name.name() != "Autodiscover" {
        return Err(RequestError::NotAutodiscover(name.name().to_owned()));
    }
    let schema = root
        .descendants()
        .find(|n| n.has_tag_name("AcceptableResponseSchema"))
        .and_then(|n| n.text())
        .unwrap_or_default();
    if name.namespace() == Some(MOBILESYNC_REQUEST_NS) || schema.contains("/mobilesync/") {
        return Ok(Request::MobileSync);
    }
    let email = root
        .children()
        .filter(|n| n.has_tag_name("Request"))
        .flat_map(|n| n.children())
        .find(|n| n.has_tag_name("EMailAddress"))
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .ok_or(RequestError::MissingEmail)?;
    Ok(Request::Outlook {
        email: email.to_owned(),
    })
}

/// The IMAP/SMTP settings response (CLIENTS.md B.2): implicit-TLS ports only, `SSL` on, `SPA`
/// off (Outlook assumes on when absent), IMAP first, then POP3, then SMTP.
pub(crate) fn settings_response(email: &str, host: &str, ports: &ClientPorts) -> String {
    let (email, host) = (escape(email), escape(host));
    let mut out = String::with_capacity(2048);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"{RESPONSE_NS}\">\n  \
         <Response xmlns=\"{OUTLOOK_RESPONSE_NS}\">\n    <Account>\n      \
         <AccountType>email</AccountType>\n      <Action>settings</Action>\n"
    );
    for (kind, port) in [("IMAP", ports.imaps), ("POP3", ports.pop3s)] {
        if port != 0 {
            let _ = write!(
                out,
                "      <Protocol>\n        <Type>{kind}</Type>\n        <Server>{host}</Server>\n        \
                 <Port>{port}</Port>\n        <LoginName>{email}</LoginName>\n        \
                 <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        \
                 <SSL>on</SSL>\n        <AuthRequired>on</AuthRequired>\n      </Protocol>\n"
            );
        }
    }
    if ports.submissions != 0 {
        let _ = write!(
            out,
            "      <Protocol>\n        <Type>SMTP</Type>\n        <Server>{host}</Server>\n        \
             <Port>{}</Port>\n        <LoginName>{email}</LoginName>\n        \
             <DomainRequired>off</DomainRequired>\n        <SPA>off</SPA>\n        \
             <SSL>on</SSL>\n        <AuthRequired>on</AuthRequired>\n        \
             <UsePOPAuth>on</UsePOPAuth>\n        <SMTPLast>off</SMTPLast>\n      </Protocol>\n",
            ports.submissions
        );
    }
    out.push_str("    </Account>\n  </Response>\n</Autodiscover>\n");
    out
}

/// Autodiscover error codes as Exchange sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// 600 Invalid Request: no usable address, or a GET without one.
    InvalidRequest,
    /// 601 Requested schema version not supported: ActiveSync (mobilesync) requests.
    SchemaNotSupported,
}

impl ErrorCode {
    fn code(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest => 600,
            ErrorCode::SchemaNotSupported => 601,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "Invalid Request",
            ErrorCode::SchemaNotSupported => {
                "Requested schema version not supported: this server offers IMAP and SMTP, not ActiveSync"
            }
        }
    }
}

/// An error response in the shape Exchange sends (`Response/Error/ErrorCode`).
pub(crate) fn error_response(code: ErrorCode) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Autodiscover xmlns=\"{RESPONSE_NS}\">\n  \
         <Response>\n    <Error>\n      <ErrorCode>{}</ErrorCode>\n      \
         <Message>{}</Message>\n      <DebugData />\n    </Error>\n  </Response>\n</Autodiscover>\n",
        code.code(),
        escape(code.message())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ns: &str, schema: &str, email: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><Autodiscover xmlns=\"{ns}\"><Request><EMailAddress>{email}</EMailAddress>\
             <AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request></Autodiscover>"
        )
    }

    #[test]
    fn requests() {
        let outlook = request(OUTLOOK_REQUEST_NS, OUTLOOK_RESPONSE_NS, " u@example.org ");
        assert_eq!(
            parse_request(outlook.as_bytes()),
            Ok(Request::Outlook {
                email: "u@example.org".into()
            })
        );
        let sync = request(
            MOBILESYNC_REQUEST_NS,
            "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006",
            "u@example.org",
        );
        assert_eq!(parse_request(sync.as_bytes()), Ok(Request::MobileSync));
        assert!(matches!(
            parse_request(b"<Autodiscover><Request>"),
            Err(RequestError::Malformed(_))
        ));
        assert_eq!(
            parse_request(b"<x/>"),
            Err(RequestError::NotAutodiscover("x".into()))
        );
        let no_email = request(OUTLOOK_REQUEST_NS, OUTLOOK_RESPONSE_NS, "");
        assert_eq!(
            parse_request(no_email.as_bytes()),
            Err(RequestError::MissingEmail)
        );
    }

    #[test]
    fn entity_expansion_is_refused() {
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE a [<!ENTITY b \"bbbbbbbb\"><!ENTITY c \"&b;&b;&b;&b;\">]>\
            <Autodiscover><Request><EMailAddress>&c;</EMailAddress></Request></Autodiscover>";
        assert!(matches!(
            parse_request(bomb),
            Err(RequestError::Malformed(_))
        ));
    }
}
