//! `#[kernel::test]`: the guest's `#[test]` (libtest needs `std`, so guests have their own
//! harness, `kernel::testing`).
//!
//! ```ignore
//! #[kernel::test]
//! fn test_sum_of_two_small_numbers_is_exact() {
//!     assert_eq!(2 + 2, 4);
//! }
//!
//! #[kernel::test]
//! #[should_panic(expected = "divide by zero")]
//! fn test_division_by_zero_panics() { /* ... */ }
//! ```
//!
//! The function is kept only in test builds (`cfg(test)`), like libtest's. Next to it goes a
//! `kernel::testing::TestCase` static in the `.flick_tests` link section, which
//! `kernel/link.ld` gathers into one array; the harness walks it. The static's symbol is
//! `__flick_test PATH`, so that the runner can name the tests without booting the image (when
//! `SKIP_KVM_TESTS=1` switches VMs off). `#[ignore]`,
//! `#[ignore = "why"]`, `#[should_panic]` and `#[should_panic(expected = "text")]` under the
//! attribute mean what they mean for libtest.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::quote;
use syn::{Attribute, Expr, ExprLit, ItemFn, Lit, Meta, ReturnType, parse_macro_input};

/// Registers a guest unit test: use it as `#[kernel::test]` in place of `#[test]`.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = Tokens::from(args);
        return syn::Error::new_spanned(args, "#[kernel::test] takes no arguments")
            .to_compile_error()
            .into();
    }
    let test = parse_macro_input!(item as ItemFn);
    match expand(test) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(mut test: ItemFn) -> syn::Result<Tokens> {
    check_signature(&test)?;
    let mut ignore = quote!(::core::option::Option::None);
    let mut should_panic = quote!(::kernel::testing::ShouldPanic::No);
    let mut kept = Vec::new();
    for attr in std::mem::take(&mut test.attrs) {
        if attr.path().is_ident("ignore") {
            let reason = string_value(&attr)?.unwrap_or_default();
            ignore = quote!(::core::option::Option::Some(#reason));
        } else if attr.path().is_ident("should_panic") {
            should_panic = match expected_message(&attr)? {
                Some(text) => quote!(::kernel::testing::ShouldPanic::WithMessage(#text)),
                None => quote!(::kernel::testing::ShouldPanic::Yes),
            };
        } else {
            kept.push(attr);
        }
    }
    test.attrs = kept;
    let name = &test.sig.ident;
    Ok(quote! {
        #[cfg(test)]
        #test

        #[cfg(test)]
        const _: () = {
            #[used]
            #[unsafe(link_section = ".flick_tests")]
            #[unsafe(export_name = ::core::concat!(
                "__flick_test ", ::core::module_path!(), "::", ::core::stringify!(#name)
            ))]
            static TEST_CASE: ::kernel::testing::TestCase = ::kernel::testing::TestCase {
                path: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                run: #name,
                ignore: #ignore,
                should_panic: #should_panic,
            };
        };
    })
}

/// A test is `fn name()`: no arguments, no generics, not async, returns `()`.
fn check_signature(test: &ItemFn) -> syn::Result<()> {
    let sig = &test.sig;
    let plain = sig.inputs.is_empty()
        && sig.generics.params.is_empty()
        && sig.asyncness.is_none()
        && sig.unsafety.is_none()
        && matches!(sig.output, ReturnType::Default);
    if plain {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            sig,
            "a #[kernel::test] is a plain `fn name()`: no arguments, generics, async, unsafe or \
             return type",
        ))
    }
}

/// `"text"` of `#[attr = "text"]`; `None` for a bare `#[attr]`.
fn string_value(attr: &Attribute) -> syn::Result<Option<String>> {
    match &attr.meta {
        Meta::Path(_) => Ok(None),
        Meta::NameValue(pair) => literal_string(&pair.value).map(Some),
        Meta::List(_) => Err(syn::Error::new_spanned(
            attr,
            "expected #[ignore] or #[ignore = \"reason\"]",
        )),
    }
}

/// The expected text of `#[should_panic(expected = "text")]` or `#[should_panic = "text"]`.
fn expected_message(attr: &Attribute) -> syn::Result<Option<String>> {
    match &attr.meta {
        Meta::Path(_) => Ok(None),
        Meta::NameValue(pair) => literal_string(&pair.value).map(Some),
        Meta::List(_) => {
            let mut expected = None;
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("expected") {
                    expected = Some(literal_string(&meta.value()?.parse()?)?);
                    Ok(())
                } else {
                    Err(meta.error("expected `expected = \"text\"`"))
                }
            })?;
            Ok(expected)
        }
    }
}

fn literal_string(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) => Ok(text.value()),
        other => Err(syn::Error::new_spanned(other, "expected a string literal")),
    }
}
