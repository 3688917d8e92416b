//! The Bazaar: the catalogue's wire shape (`GET /discovery/resources`), shared by the
//! facilitator's catalogue and Dial's own listing, and the extraction of what a resource server
//! declares in a payment (`resource` and `extensions.bazaar`), validated and sanitised as the
//! specification's soft-drop rules say: a bad field is dropped, a bad declaration is rejected.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::X402Version;

/// One catalogued resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryItem {
    /// The resource URL (for a dynamic route, its template on the concrete origin).
    pub resource: String,
    /// `http` or `mcp`.
    #[serde(rename = "type")]
    pub kind: String,
    pub x402_version: X402Version,
    /// The payment requirements it accepts.
    pub accepts: Vec<Value>,
    /// RFC 3339.
    pub last_updated: String,
    /// Description, service name, tags, icon, method or tool, input and output.
    pub metadata: Value,
}

/// `GET /discovery/resources`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveryPage {
    pub x402_version: X402Version,
    pub items: Vec<DiscoveryItem>,
    pub pagination: Pagination,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    pub limit: usize,
    pub offset: usize,
    pub total: usize,
}

/// What a payment declared for the catalogue, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Declaration {
    /// The catalogue key: the resource, and for an MCP tool the tool's name too.
    pub key: String,
    pub kind: String,
    /// `lastUpdated` is filled when it is served.
    pub resource: String,
    pub accepts: Value,
    pub metadata: Value,
}

/// Largest `extensions.bazaar` we read: a catalogue entry, not a document store.
const MAX_DECLARATION_BYTES: usize = 16 * 1024;

/// Reads a v2 payload's `resource` and `extensions.bazaar`. `Ok(None)`: nothing declared;
/// `Err`: declared but refused (the reason goes back in `EXTENSION-RESPONSES` and the logs; the
/// payment itself is unaffected).
///
/// # Errors
/// A declaration whose `info` fails its own `schema`, or that lacks the parts the specification
/// requires (`input.type` http or mcp, a resource URL, an MCP tool name).
pub fn declaration(
    resource: Option<&Value>,
    extensions: Option<&Value>,
    accepted: &Value,
) -> Result<Option<Declaration>, String> {
    let Some(bazaar) = extensions.and_then(|e| e.get("bazaar")) else {
        return Ok(None);
    };
    if bazaar.to_string().len() > MAX_DECLARATION_BYTES {
        return Err(format!(
            "the bazaar extension is over {MAX_DECLARATION_BYTES} bytes"
        ));
    }
    let info = bazaar.get("info").ok_or("bazaar.info is missing")?;
    let schema = bazaar.get("schema").ok_or("bazaar.schema is missing")?;
    // Draft 2020-12, no remote references (the crate is built without resolvers): a declaration
    // cannot make the facilitator fetch anything.
    let validator = jsonschema::draft202012::new(schema)
        .map_err(|e| format!("bazaar.schema is not a usable JSON Schema: {e}"))?;
    if let Err(e) = validator.validate(info) {
        return Err(format!("bazaar.info does not match bazaar.schema: {e}"));
    }
    let input = info.get("input").ok_or("bazaar.info.input is missing")?;
    let url = resource
        .and_then(|r| r.get("url"))
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or("resource.url must be an absolute http(s) URL")?;
    let kind = input.get("type").and_then(Value::as_str);
    let mut metadata = service_metadata(resource);
    let (key, resource_url) = match kind {
        Some("http") => {
            let method = input
                .get("method")
                .and_then(Value::as_str)
                .filter(|m| ["GET", "HEAD", "DELETE", "POST", "PUT", "PATCH"].contains(m))
                .ok_or("bazaar.info.input.method must be an HTTP method")?;
            let mut catalogued = url.clone();
            catalogued.set_query(None);
            catalogued.set_fragment(None);
            if let Some(template) = bazaar
                .get("routeTemplate")
                .and_then(Value::as_str)
                .filter(|t| valid_route_template(t))
            {
                catalogued.set_path(template);
            }
            metadata["method"] = json!(method);
            let resource = catalogued.to_string();
            (format!("http {method} {resource}"), resource)
        }
        Some("mcp") => {
            // The SDKs write `toolName` (`@x402/extensions` 2.27); earlier specification text
            // said `tool`.
            let tool = input
                .get("toolName")
                .or_else(|| input.get("tool"))
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty() && t.len() <= 128)
                .ok_or("bazaar.info.input.toolName must name the MCP tool")?;
            metadata["toolName"] = json!(tool);
            let resource = url.to_string();
            // The specification's key for MCP: (resource.url, tool name).
            (format!("mcp {resource} {tool}"), resource)
        }
        _ => return Err("bazaar.info.input.type must be \"http\" or \"mcp\"".into()),
    };
    metadata["input"] = input.clone();
    if let Some(output) = info.get("output") {
        metadata["output"] = output.clone();
    }
    Ok(Some(Declaration {
        key,
        kind: kind.unwrap_or_default().to_owned(),
        resource: resource_url,
        accepts: json!([accepted]),
        metadata,
    }))
}

/// `description`, `mimeType`, and the service metadata that passes the soft-drop rules.
fn service_metadata(resource: Option<&Value>) -> Value {
    let mut m = json!({});
    let Some(r) = resource else {
        return m;
    };
    for field in ["description", "mimeType"] {
        if let Some(s) = r
            .get(field)
            .and_then(Value::as_str)
            .filter(|s| s.len() <= 1024)
        {
            m[field] = json!(s);
        }
    }
    if let Some(name) = r
        .get("serviceName")
        .and_then(Value::as_str)
        .filter(|s| printable_ascii(s, 32))
    {
        m["serviceName"] = json!(name);
    }
    if let Some(tags) = r.get("tags").and_then(Value::as_array) {
        let tags = sanitize_tags(tags);
        if !tags.is_empty() {
            m["tags"] = json!(tags);
        }
    }
    if let Some(icon) = r
        .get("iconUrl")
        .and_then(Value::as_str)
        .filter(|u| valid_icon_url(u))
    {
        m["iconUrl"] = json!(icon);
    }
    m
}

/// Non-empty printable ASCII (U+0020–U+007E) of at most `max` characters.
fn printable_ascii(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// At most five valid tags, deduplicated case-insensitively (first occurrence wins).
fn sanitize_tags(tags: &[Value]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tags.iter()
        .filter_map(Value::as_str)
        .filter(|t| printable_ascii(t, 32))
        .filter(|t| seen.insert(t.to_ascii_lowercase()))
        .take(5)
        .map(str::to_owned)
        .collect()
}

/// An absolute http(s) URL of at most 2048 characters, no userinfo, whose (IDN-normalised,
/// percent-decoded) host is a name: not an IP literal, not a loopback name, not an all-digit or
/// hex-encoded address.
fn valid_icon_url(s: &str) -> bool {
    if s.len() > 2048 || s.chars().any(char::is_control) {
        return false;
    }
    let Ok(u) = url::Url::parse(s) else {
        return false;
    };
    if !matches!(u.scheme(), "http" | "https") || !u.username().is_empty() || u.password().is_some()
    {
        return false;
    }
    // `url` has already applied UTS #46 and percent-decoding to the host; an IP in any spelling
    // it understands is `Host::Ipv4`/`Ipv6`.
    let Some(url::Host::Domain(host)) = u.host() else {
        return false;
    };
    let host = host.trim_end_matches('.');
    let loopback = [
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
    ];
    let all_digits = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let hex = host
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    !host.is_empty() && !loopback.contains(&host) && !all_digits && !hex
}

/// `/path/:param…` of safe characters, no traversal or scheme after percent-decoding.
fn valid_route_template(t: &str) -> bool {
    let safe = t.starts_with('/')
        && t.len() > 1
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_/:.-~%".contains(&b));
    if !safe {
        return false;
    }
    let decoded = percent_encoding::percent_decode_str(t).decode_utf8_lossy();
    !decoded.contains("..") && !decoded.contains("://")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_bazaar() -> Value {
        json!({"bazaar": {
            "info": {"input": {"type": "http", "method": "GET", "queryParams": {"city": "Paris"}},
                     "output": {"type": "json", "example": {"t": 1}}},
            "schema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                       "properties": {"input": {"type": "object",
                            "properties": {"type": {"const": "http"}, "method": {"enum": ["GET"]},
                                           "queryParams": {"type": "object"}},
                            "required": ["type", "method"]}},
                       "required": ["input"]}}})
    }

    #[test]
    fn an_http_declaration_is_keyed_by_method_and_url_without_query() {
        let resource = json!({"url": "https://api.example.com/weather?city=Paris",
            "description": "Weather", "serviceName": "Example Weather",
            "tags": ["weather", "Weather", "forecast", "", "x".repeat(40)],
            "iconUrl": "https://cdn.example.com/i.png"});
        let d = declaration(
            Some(&resource),
            Some(&http_bazaar()),
            &json!({"scheme": "exact"}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(d.key, "http GET https://api.example.com/weather");
        assert_eq!(d.metadata["tags"], json!(["weather", "forecast"]));
        assert_eq!(d.metadata["serviceName"], "Example Weather");
        assert_eq!(d.metadata["iconUrl"], "https://cdn.example.com/i.png");
        assert_eq!(d.metadata["method"], "GET");
    }

    #[test]
    fn info_failing_its_schema_is_rejected_and_nothing_declared_is_none() {
        let mut bad = http_bazaar();
        bad["bazaar"]["info"]["input"]["method"] = json!("POST");
        let resource = json!({"url": "https://api.example.com/x"});
        assert!(declaration(Some(&resource), Some(&bad), &json!({})).is_err());
        assert_eq!(declaration(Some(&resource), None, &json!({})), Ok(None));
        let remote = json!({"bazaar": {"info": {"input": {"type": "http", "method": "GET"}},
            "schema": {"$ref": "https://evil.example/schema.json"}}});
        assert!(declaration(Some(&resource), Some(&remote), &json!({})).is_err());
    }

    #[test]
    fn hostile_service_metadata_is_dropped_field_by_field() {
        for icon in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "https://user@cdn.example.com/i.png",
            "https://127.0.0.1/i.png",
            "https://[::1]/i.png",
            "https://localhost/i.png",
            "https://2130706433/i.png",
            "https://0x7f000001/i.png",
            "https://%6c%6f%63%61%6c%68%6f%73%74/i.png",
        ] {
            assert!(!valid_icon_url(icon), "{icon}");
        }
        assert!(!printable_ascii("Café", 32));
        assert!(!printable_ascii("a\u{7}b", 32));
        assert!(!valid_route_template("/users/%2e%2e/admin"));
        assert!(!valid_route_template("/x/http://evil"));
        assert!(valid_route_template("/users/:userId"));
    }
}
