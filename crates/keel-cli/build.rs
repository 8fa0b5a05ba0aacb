//! Links `keel` as a fixed-address (non-PIE) executable. Keel starts an attempt supervisor,
//! which is this same binary, for every attempt; a position-independent build spends most of
//! that start-up applying some 35,000 relocations, which a fixed-address build does not have.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
