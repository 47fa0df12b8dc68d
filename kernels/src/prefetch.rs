//! Software prefetch: asks the memory system to start loading the cache lines of `len` bytes
//! from `p` into the data cache, for a read or a write soon. A hint: it never faults, never
//! changes memory and may do nothing (the generic form, and targets without an instruction).
//!
//! Latency-bound loops that know their next addresses early (SGD over shuffled ratings, row
//! gathers) issue it a few iterations ahead, so that several misses are in flight at once.

/// Bytes per cache line assumed when walking `len` bytes (64 on every target Ember runs on).
pub const LINE: usize = 64;

/// Prefetches the lines covering `[p, p + len)`. Safe for any address: a prefetch of an
/// unmapped or invalid address is dropped by the CPU, and no memory is read into Rust values.
#[inline(always)]
pub fn prefetch(p: *const u8, len: usize) {
    let (first, lines) = line_span(p as usize, len);
    let base = p.wrapping_sub(p as usize - first);
    for l in 0..lines {
        line(base.wrapping_add(l * LINE));
    }
}

/// The first line's address and the number of lines that hold a byte of `[addr, addr + len)`
/// (an unaligned row spans one line more than its length suggests).
pub fn line_span(addr: usize, len: usize) -> (usize, usize) {
    let first = addr & !(LINE - 1);
    if len == 0 {
        return (first, 0);
    }
    let last = addr.wrapping_add(len - 1) & !(LINE - 1);
    (first, last.wrapping_sub(first) / LINE + 1)
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn line(p: *const u8) {
    // SAFETY: `prefetcht0` is a hint (SSE, part of the x86_64 baseline): it reads no memory
    // into registers and never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    }
}

#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn line(p: *const u8) {
    // SAFETY: `prfm` is a hint in the base A64 ISA: it never faults and writes nothing.
    unsafe {
        core::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn line(_p: *const u8) {}
