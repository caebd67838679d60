//! A small, bounded element tree built with quick-xml, for reading XML whose element names are
//! only inferred: names are kept as lower-case local names (no prefix, no namespace), text is
//! unescaped, and everything else (attributes, comments, processing instructions) is dropped.

use quick_xml::events::Event;

/// Deepest nesting accepted; deeper documents are rejected rather than risking the stack.
pub const MAX_DEPTH: usize = 64;

/// Most elements accepted in one document.
pub const MAX_ELEMENTS: usize = 200_000;

/// One element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// Local name, lower case.
    pub name: String,
    /// Concatenated direct text content, unescaped.
    pub text: String,
    /// Child elements in document order.
    pub children: Vec<Node>,
}

impl Node {
    /// The first child with this lower-case local name.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|child| child.name == name)
    }

    /// The trimmed text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<String> {
        self.child(name).map(|child| child.text.trim().to_owned())
    }

    /// All children with this name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |child| child.name == name)
    }
}

/// Parses a document into its root element.
///
/// Fails on malformed XML, text that is not UTF-8, nesting deeper than [`MAX_DEPTH`], more than
/// [`MAX_ELEMENTS`] elements, or a document without a root element.
pub fn parse(body: &[u8]) -> Result<Node, String> {
    let text = std::str::from_utf8(body).map_err(|error| format!("not UTF-8: {error}"))?;
    let mut reader = quick_xml::Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut elements = 0usize;
    loop {
        let event = reader.read_event().map_err(|error| format!("at byte {}: {error}", reader.buffer_position()))?;
        match event {
            Event::Start(start) | Event::Empty(start) if root.is_some() => {
                let _ = start;
                return Err("content after the root element".into());
            }
            Event::Start(start) => {
                elements += 1;
                if stack.len() >= MAX_DEPTH || elements > MAX_ELEMENTS {
                    return Err("document too deep or too large".into());
                }
                stack.push(Node { name: local_name(start.local_name().as_ref()), ..Node::default() });
            }
            Event::Empty(start) => {
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err("document too large".into());
                }
                let node = Node { name: local_name(start.local_name().as_ref()), ..Node::default() };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or("unexpected end tag")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => root = Some(node),
                }
            }
            Event::Text(text) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&text.xml10_content());
                } else if !text.trim().is_empty() {
                    return Err("text outside the root element".into());
                }
            }
            Event::CData(data) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&data.xml10_content());
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(character)) => character.to_string(),
                    Ok(None) => quick_xml::escape::resolve_predefined_entity(&reference)
                        .ok_or_else(|| format!("unknown entity &{};", &*reference))?
                        .to_owned(),
                    Err(error) => return Err(error.to_string()),
                };
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&resolved);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("document ends inside an element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

fn local_name(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_local_and_lower_case_and_text_is_unescaped() {
        let root = parse(b"<?xml version=\"1.0\"?><a:Root xmlns:a=\"urn:x\"><Item kind=\"x\">fish &amp; chips &#x41;</Item><Empty/><!-- c --><![CDATA[<raw>]]></a:Root>").unwrap();
        assert_eq!(root.name, "root");
        assert_eq!(root.child_text("item").as_deref(), Some("fish & chips A"));
        assert!(root.child("empty").is_some());
        assert_eq!(root.text, "<raw>");
    }

    #[test]
    fn rejects_malformed_and_hostile_documents() {
        assert!(parse(b"<a><b></a>").is_err());
        assert!(parse(b"<a>").is_err());
        assert!(parse(b"").is_err());
        assert!(parse(b"<a/><b/>").is_err());
        assert!(parse(b"<a>&bogus;</a>").is_err());
        assert!(parse(&[0xff, 0xfe, 0x3c]).is_err());
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("too deep"));
    }
}
