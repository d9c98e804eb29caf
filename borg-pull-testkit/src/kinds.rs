//! One named test per error kind, for the unit tests of every crate whose errors classify
//! themselves (`kind()`): each kind has at least one variant listed, and each listed variant
//! answers that kind.

/// `kind_cases!(every_variant, ErrorKind; test_name: Kind, ...)` defines one `#[test]` per kind.
/// `every_variant()` returns `Vec<(Error, ErrorKind)>`: every variant of the error with the kind
/// it must report.
#[macro_export]
macro_rules! kind_cases {
    ($every_variant:ident, $kind:ident; $($name:ident: $variant:ident,)*) => {$(
        #[test]
        fn $name() {
            let all = $every_variant();
            let listed: Vec<_> =
                all.iter().filter(|(_, k)| *k == $kind::$variant).map(|(e, _)| e).collect();
            assert!(!listed.is_empty(), "no variant of kind {:?}", $kind::$variant);
            for e in listed {
                assert_eq!(e.kind(), $kind::$variant, "{e:?}");
            }
        }
    )*};
}
