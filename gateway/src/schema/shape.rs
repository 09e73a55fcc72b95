//! How much a GraphQL document really asks for once its fragments are expanded, measured in one
//! pass before anything else walks it.
//!
//! async-graphql's own pre-validation checks (recursion depth, directives) and its validator follow
//! every fragment spread anew, so a document in which each fragment spreads the previous one twice
//! costs 2^n visits for a few hundred bytes of text. [`DocumentShape::measure`] sizes each fragment
//! once (memoised, in the spirit of the fix for GHSA-mfj6-6p54-m98c), so its cost is linear in the
//! text, and the gateway refuses a document over its limits before the exponential walks start.

use std::collections::HashMap;

use async_graphql::Name;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};

/// The expanded size of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocumentShape {
    /// Fields selected in all operations together, counting a fragment's fields once per spread.
    pub selections: usize,
    /// The most top-level fields (aliases included, root fragments expanded) of one operation.
    pub root_fields: usize,
}

/// One selection set's expanded size: all fields in it, and those at its own level.
#[derive(Debug, Clone, Copy, Default)]
struct Size {
    selections: usize,
    fields: usize,
}

impl Size {
    fn add(&mut self, other: Size) {
        self.selections = self.selections.saturating_add(other.selections);
        self.fields = self.fields.saturating_add(other.fields);
    }
}

impl DocumentShape {
    pub fn measure(document: &ExecutableDocument) -> Self {
        let mut sizer = Sizer { document, fragments: HashMap::new() };
        let mut shape = DocumentShape::default();
        for (_, operation) in document.operations.iter() {
            let size = sizer.selection_set(&operation.node.selection_set.node);
            shape.selections = shape.selections.saturating_add(size.selections);
            shape.root_fields = shape.root_fields.max(size.fields);
        }
        shape
    }
}

struct Sizer<'d> {
    document: &'d ExecutableDocument,
    /// Each fragment's size once known; `None` while it is being measured, so a cycle (which
    /// validation reports anyway) counts as empty instead of recursing forever.
    fragments: HashMap<&'d Name, Option<Size>>,
}

impl<'d> Sizer<'d> {
    fn selection_set(&mut self, set: &'d SelectionSet) -> Size {
        let mut size = Size::default();
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let children = self.selection_set(&field.node.selection_set.node);
                    size.add(Size { selections: children.selections.saturating_add(1), fields: 1 });
                }
                Selection::FragmentSpread(spread) => size.add(self.fragment(&spread.node.fragment_name.node)),
                Selection::InlineFragment(inline) => {
                    size.add(self.selection_set(&inline.node.selection_set.node))
                }
            }
        }
        size
    }

    fn fragment(&mut self, name: &'d Name) -> Size {
        if let Some(known) = self.fragments.get(name) {
            return known.unwrap_or_default();
        }
        let Some(definition) = self.document.fragments.get(name) else { return Size::default() };
        self.fragments.insert(name, None);
        let size = self.selection_set(&definition.node.selection_set.node);
        self.fragments.insert(name, Some(size));
        size
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use async_graphql::parser::parse_query;

    use super::*;

    fn shape(query: &str) -> DocumentShape {
        DocumentShape::measure(&parse_query(query).unwrap())
    }

    /// `{ ...F<levels> }` where `F0 { __typename }` and each `Fi` spreads `F(i-1)` twice.
    fn fragment_bomb(levels: usize) -> String {
        let mut query = format!("{{ ...F{levels} }} fragment F0 on QueryRoot {{ __typename }}");
        for level in 1..=levels {
            let previous = level - 1;
            query.push_str(&format!(" fragment F{level} on QueryRoot {{ ...F{previous} ...F{previous} }}"));
        }
        query
    }

    #[test]
    fn counts_fields_with_their_children() {
        let measured = shape("{ concerts { edges { node { id title } } } me { id } }");
        assert_eq!(measured, DocumentShape { selections: 7, root_fields: 2 });
    }

    #[test]
    fn a_fragment_counts_once_per_spread() {
        let measured = shape(
            "{ a: concert(id: 1) { ...C } b: concert(id: 2) { ...C } } fragment C on Concert { id title }",
        );
        assert_eq!(measured, DocumentShape { selections: 6, root_fields: 2 });
    }

    #[test]
    fn fragments_and_inline_fragments_at_the_root_count_as_root_fields() {
        let measured = shape(
            "{ ...R ... on QueryRoot { c: __typename } } fragment R on QueryRoot { a: __typename b: __typename }",
        );
        assert_eq!(measured.root_fields, 3);
    }

    #[test]
    fn the_fragment_bomb_is_measured_exactly_and_at_once() {
        // 2^40 fields: far past any limit, measured without expanding it.
        let measured = shape(&fragment_bomb(40));
        assert_eq!(measured.selections, 1 << 40);
        assert_eq!(measured.root_fields, 1 << 40);
    }

    #[test]
    fn cycles_and_unknown_fragments_do_not_hang() {
        let measured = shape(
            "{ ...A ...Missing } fragment A on QueryRoot { x ...B } fragment B on QueryRoot { y ...A }",
        );
        assert_eq!(measured.selections, 2);
    }

    #[test]
    fn every_operation_of_a_document_counts() {
        let measured = shape("query A { a b } query B { c }");
        assert_eq!(measured, DocumentShape { selections: 3, root_fields: 2 });
    }
}
