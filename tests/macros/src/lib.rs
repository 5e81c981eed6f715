//! `#[kvm_test]`, the attribute of every test that needs `/dev/kvm` (re-exported as
//! `tests::kvm_test`).
//!
//! ```text
//! #[tests::kvm_test]
//! fn test_hello_greets_and_exits_zero() { /* boots a VM */ }
//! ```
//!
//! expands to a `#[test]` that is `#[ignore = "SKIP_KVM_TESTS=1"]` when the `tests` crate was
//! built with `SKIP_KVM_TESTS=1` (its build script sets `cfg(skip_kvm)`), so that libtest
//! names it as ignored and counts it; and whose body starts with `tests::require_kvm()`, which
//! fails the test with the reason when `/dev/kvm` cannot be opened.

use proc_macro::TokenStream;
use quote::quote;
use syn::{ItemFn, parse_macro_input, parse_quote};

/// Marks a test that needs `/dev/kvm`: use it instead of `#[test]`.
#[proc_macro_attribute]
pub fn kvm_test(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        let args = proc_macro2::TokenStream::from(args);
        return syn::Error::new_spanned(args, "#[kvm_test] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut test = parse_macro_input!(item as ItemFn);
    test.block
        .stmts
        .insert(0, parse_quote!(::tests::require_kvm();));
    quote! {
        #[test]
        #[cfg_attr(skip_kvm, ignore = "SKIP_KVM_TESTS=1")]
        #test
    }
    .into()
}
