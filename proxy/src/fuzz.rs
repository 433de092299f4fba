//! A small mutation fuzzer for the fuzz tests of this crate and the
//! control plane (not used by the proxy itself). It runs on the stable
//! toolchain inside ordinary tests: start from seed inputs, mutate them
//! (bit flips, interesting bytes, insertions, deletions, repeats, splices
//! of two seeds), and feed each result to the target. A panic in the
//! target fails the test with the input that caused it, as hex, so it can
//! become a regression case.
//!
//! Runs are bounded and reproducible: `REMORA_FUZZ_ITERATIONS` multiplies
//! every target's iteration count (default 1), `REMORA_FUZZ_SEED` picks
//! the random seed (default fixed).

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Bytes worth trying at any position: delimiters of YAML, HTTP and
/// protobuf, and the edges of a byte.
const INTERESTING: &[u8] = b"\0\xff\x7f\x80\r\n\t :,;-{}[]\"'#&*!|>%@`\\/?=";

/// Runs `target` on `iterations` (times `REMORA_FUZZ_ITERATIONS`) inputs
/// mutated from `seeds`, then on every seed as it is; returns how many
/// inputs it ran. Panics, naming the input, if `target` panics.
pub fn run(
    name: &str,
    seeds: &[Vec<u8>],
    iterations: usize,
    mut target: impl FnMut(&[u8]),
) -> usize {
    assert!(!seeds.is_empty(), "fuzz target {name} has no seeds");
    let scale: usize = std::env::var("REMORA_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let seed: u64 = std::env::var("REMORA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let mut mutator = Mutator { state: seed | 1 };
    let mut run_one = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            panic!(
                "fuzz target {name} panicked on input ({} bytes): {}",
                input.len(),
                hex(input)
            );
        }
    };
    for seed in seeds {
        run_one(seed);
    }
    let total = iterations * scale;
    for _ in 0..total {
        let input = mutator.mutate(seeds);
        run_one(&input);
    }
    seeds.len() + total
}

struct Mutator {
    state: u64,
}

impl Mutator {
    /// xorshift64*: fast, and the same sequence for the same seed.
    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn mutate(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut input = seeds[self.below(seeds.len())].clone();
        for _ in 0..=self.below(4) {
            let at = self.below(input.len() + 1);
            match self.below(7) {
                0 if !input.is_empty() => {
                    let i = at.min(input.len() - 1);
                    input[i] ^= 1 << self.below(8);
                }
                1 if !input.is_empty() => {
                    let i = at.min(input.len() - 1);
                    input[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                2 => {
                    let byte = INTERESTING[self.below(INTERESTING.len())];
                    input.insert(at, byte);
                }
                3 if !input.is_empty() => {
                    let end = (at + 1 + self.below(16)).min(input.len());
                    input.drain(at.min(end)..end);
                }
                4 if !input.is_empty() => {
                    let start = at.min(input.len() - 1);
                    let end = (start + 1 + self.below(32)).min(input.len());
                    let piece = input[start..end].to_vec();
                    let times = 1 + self.below(8);
                    for _ in 0..times {
                        input.splice(start..start, piece.iter().copied());
                    }
                }
                5 => {
                    let other = &seeds[self.below(seeds.len())];
                    let from = self.below(other.len());
                    let tail = other[from..].to_vec();
                    input.truncate(at);
                    input.extend_from_slice(&tail);
                }
                _ => {
                    let byte = self.next() as u8;
                    input.insert(at, byte);
                }
            }
        }
        input
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let seeds = vec![b"hello: world".to_vec()];
        let mut a = Mutator { state: 7 };
        let mut b = Mutator { state: 7 };
        for _ in 0..100 {
            assert_eq!(a.mutate(&seeds), b.mutate(&seeds));
        }
    }

    #[test]
    #[should_panic(expected = "fuzz target boom panicked on input")]
    fn a_panicking_target_is_reported_with_its_input() {
        run("boom", &[b"x".to_vec()], 10, |input| {
            assert!(input.len() < 2, "too long");
        });
    }
}
