//! Just enough XML for UPnP: find elements by local name (namespace prefixes ignored),
//! take their text, escape and unescape the five predefined entities. Device
//! descriptions and SOAP answers are small, flat and machine-written; this is not a
//! general XML parser and never needs to be.

/// Inner text (raw, not unescaped) of every element whose local name is `name`, in
/// document order. Elements of the same name must not nest.
pub(crate) fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(rel) = xml[pos..].find('<') {
        let start = pos + rel + 1;
        let rest = &xml[start..];
        let end_name = rest
            .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
            .unwrap_or(rest.len());
        let qname = &rest[..end_name];
        pos = start;
        if qname.starts_with(['/', '?', '!']) || local(qname) != name {
            continue;
        }
        let Some(gt) = rest.find('>') else { break };
        if rest[..gt].ends_with('/') {
            out.push("");
            pos = start + gt + 1;
            continue;
        }
        let body_start = start + gt + 1;
        let close = format!("</{qname}>");
        let Some(body_len) = xml[body_start..].find(&close) else {
            break;
        };
        out.push(&xml[body_start..body_start + body_len]);
        pos = body_start + body_len + close.len();
    }
    out
}

/// Unescaped, trimmed text of the first element named `name`.
pub(crate) fn text(xml: &str, name: &str) -> Option<String> {
    elements(xml, name).first().map(|t| unescape(t.trim()))
}

fn local(qname: &str) -> &str {
    qname.rsplit_once(':').map_or(qname, |(_, l)| l)
}

/// Replaces the predefined entities and numeric character references.
pub(crate) fn unescape(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(semi) = rest.find(';').filter(|n| *n <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..semi];
        let ch = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Escapes text for an element body.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_elements_by_local_name() {
        let xml = r#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body>
            <u:GetExternalIPAddressResponse xmlns:u="urn:x">
            <NewExternalIPAddress>11.77.2.1</NewExternalIPAddress>
            </u:GetExternalIPAddressResponse><empty/><a>1 &amp; 2 &#x41;&#66;</a></s:Body></s:Envelope>"#;
        assert_eq!(
            text(xml, "NewExternalIPAddress").as_deref(),
            Some("11.77.2.1")
        );
        assert_eq!(elements(xml, "Body").len(), 1);
        assert_eq!(text(xml, "empty").as_deref(), Some(""));
        assert_eq!(text(xml, "a").as_deref(), Some("1 & 2 AB"));
        assert_eq!(text(xml, "missing"), None);
        assert_eq!(elements("<a>1</a><a>2</a><b/>", "a"), vec!["1", "2"]);
        assert_eq!(elements("<a>unclosed", "a"), Vec::<&str>::new());
        assert_eq!(escape("<&>\"'"), "&lt;&amp;&gt;&quot;&apos;");
        assert_eq!(unescape("&bogus; & &lt;"), "&bogus; & <");
    }
}
