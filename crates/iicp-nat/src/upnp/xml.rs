//! The XML of UPnP, on [`roxmltree`]: device descriptions and SOAP answers are parsed
//! into a tree (bounded: no DTD, at most [`MAX_NODES`] nodes, and the caller has already
//! capped the text at the HTTP layer), elements are found by local name (namespace
//! prefixes and URIs ignored, as gateways vary), and their text comes unescaped. The
//! only XML we write is the SOAP request body, whose values [`escape`] makes safe.

use roxmltree::{Document, Node, ParsingOptions};

/// Most nodes (elements, text, attributes…) of one parsed answer. A miniupnpd
/// description has about 300; the cap bounds the tree a hostile gateway can make us build.
pub(crate) const MAX_NODES: u32 = 20_000;

/// A parsed UPnP document.
pub(crate) struct Xml<'input> {
    doc: Document<'input>,
}

impl<'input> Xml<'input> {
    /// Parses `text` (no DTD, at most [`MAX_NODES`] nodes).
    ///
    /// # Errors
    /// The `roxmltree` error when `text` is not well-formed XML (undeclared namespace
    /// prefixes and unknown entities included) or too large a tree.
    pub(crate) fn parse(text: &'input str) -> Result<Self, roxmltree::Error> {
        let options = ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_NODES,
        };
        Document::parse_with_options(text, options).map(|doc| Self { doc })
    }

    /// The root element.
    pub(crate) fn root(&self) -> Node<'_, 'input> {
        self.doc.root_element()
    }

    /// Unescaped, trimmed text of the first element named `name` in document order.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        first(self.root(), name).map(text_of)
    }
}

/// Every element below `node` (itself included) whose local name is `name`, in
/// document order.
pub(crate) fn elements<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    name: &'a str,
) -> impl Iterator<Item = Node<'a, 'input>> + 'a {
    node.descendants()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// The first element below `node` (itself included) named `name`.
pub(crate) fn first<'a, 'input: 'a>(
    node: Node<'a, 'input>,
    name: &'a str,
) -> Option<Node<'a, 'input>> {
    elements(node, name).next()
}

/// The text directly inside `node` (all its text children: a comment may split it),
/// unescaped and trimmed.
pub(crate) fn text_of(node: Node<'_, '_>) -> String {
    let text: String = node
        .children()
        .filter(Node::is_text)
        .filter_map(|n| n.text())
        .collect();
    text.trim().to_owned()
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
        let text = r#"<?xml version="1.0"?><s:Envelope xmlns:s="x"><s:Body>
            <u:GetExternalIPAddressResponse xmlns:u="urn:x">
            <NewExternalIPAddress>11.77.2.1</NewExternalIPAddress>
            </u:GetExternalIPAddressResponse><empty/><a>1 &amp; 2 &#x41;&#66;</a><c>x<!-- split -->y</c></s:Body></s:Envelope>"#;
        let xml = Xml::parse(text).unwrap();
        assert_eq!(
            xml.text("NewExternalIPAddress").as_deref(),
            Some("11.77.2.1")
        );
        assert_eq!(elements(xml.root(), "Body").count(), 1);
        assert_eq!(xml.text("empty").as_deref(), Some(""));
        assert_eq!(xml.text("a").as_deref(), Some("1 & 2 AB"));
        assert_eq!(xml.text("c").as_deref(), Some("xy"));
        assert_eq!(xml.text("missing"), None);
        let two = Xml::parse("<r><a>1</a><a>2</a><b/></r>").unwrap();
        let texts: Vec<String> = elements(two.root(), "a").map(text_of).collect();
        assert_eq!(texts, ["1", "2"]);
        assert_eq!(escape("<&>\"'"), "&lt;&amp;&gt;&quot;&apos;");
    }

    #[test]
    fn refuses_what_is_not_xml() {
        // an unclosed element, an unknown entity, a bare `&`, an undeclared prefix
        for bad in [
            "<a>unclosed",
            "<a>&bogus;</a>",
            "<a>1 & 2</a>",
            "<s:Envelope/>",
            "",
            "HTTP/1.1 200 OK",
        ] {
            assert!(Xml::parse(bad).is_err(), "{bad:?}");
        }
        // no DTD: entity expansion bombs never start
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>"#;
        assert!(Xml::parse(bomb).is_err());
        // a tree larger than MAX_NODES is refused, not built
        let wide = format!("<r>{}</r>", "<e/>".repeat(MAX_NODES as usize + 1));
        assert!(Xml::parse(&wide).is_err());
    }
}
