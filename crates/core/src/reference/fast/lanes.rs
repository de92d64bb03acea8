//! Eight f32 lanes, the unit of the SIMD dot products: one AVX2 register, or two 128-bit ones
//! (NEON, wasm SIMD128). Every implementation does the same IEEE operations in the same order,
//! so the kernels built on it (tiles.rs) are bit for bit the reference's `ops::dot` everywhere.

/// An 8-lane f32 vector. The methods are `unsafe` because they use the ISA's intrinsics: the
/// caller has checked the ISA is there (isa/mod.rs) and that pointers have 8 readable elements.
pub trait Lanes: Copy {
    /// Tokens per register tile: 2 × `TOKENS` accumulators plus two weight vectors must fit the
    /// register file.
    const TOKENS: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    /// Eight bf16 (the high halves of f32s) widened.
    unsafe fn bf16(p: *const u16) -> Self;
    /// Eight IEEE halves widened. By default one at a time (`half`, the reference's exact
    /// conversion), for instruction sets whose half-float conversion is not in stable Rust
    /// (NEON's `vcvt_f32_f16`) or does not exist (SIMD128).
    #[inline(always)]
    unsafe fn f16(p: *const u16) -> Self {
        let mut v = [0f32; 8];
        for (i, o) in v.iter_mut().enumerate() {
            *o = half::f16::from_bits(*p.add(i)).to_f32();
        }
        Self::load(v.as_ptr())
    }
    unsafe fn add(a: Self, b: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
    /// The lanes summed in the reference's order: `((a0+a4)+(a1+a5)) + ((a2+a6)+(a3+a7))`.
    unsafe fn hsum(self) -> f32;
    unsafe fn store(self, p: *mut f32);
    /// `[a[0].hsum(), .., a[7].hsum()]` as one vector (eight dot products finished at once).
    #[inline(always)]
    unsafe fn hsum8(a: [Self; 8]) -> Self {
        let mut v = [0f32; 8];
        for (o, x) in v.iter_mut().zip(a) {
            *o = x.hsum();
        }
        Self::load(v.as_ptr())
    }
    // The defaults below go lane by lane through memory: instruction sets override the ones
    // their kernels use in hot loops (isa/avx2.rs).
    #[inline(always)]
    unsafe fn max(a: Self, b: Self) -> Self {
        lanewise(a, b, f32::max)
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Self::load([x; 8].as_ptr())
    }
    #[inline(always)]
    unsafe fn sub(a: Self, b: Self) -> Self {
        lanewise(a, b, |x, y| x - y)
    }
    #[inline(always)]
    unsafe fn div(a: Self, b: Self) -> Self {
        lanewise(a, b, |x, y| x / y)
    }
    /// `ops::exp` of each lane, bit for bit. By default lane by lane.
    #[inline(always)]
    unsafe fn exp(self) -> Self {
        let mut v = [0f32; 8];
        self.store(v.as_mut_ptr());
        for x in &mut v {
            *x = crate::reference::ops::exp(*x);
        }
        Self::load(v.as_ptr())
    }
}

/// `f` of each pair of lanes, through memory.
#[inline(always)]
unsafe fn lanewise<L: Lanes>(a: L, b: L, f: impl Fn(f32, f32) -> f32) -> L {
    let (mut x, mut y) = ([0f32; 8], [0f32; 8]);
    a.store(x.as_mut_ptr());
    b.store(y.as_mut_ptr());
    for (x, y) in x.iter_mut().zip(y) {
        *x = f(*x, y);
    }
    L::load(x.as_ptr())
}

/// A weight element as stored: what one row of the matrix is a slice of.
pub trait Elem: Copy {
    /// Eight consecutive weights from `row[i]` on as lanes.
    unsafe fn load8<L: Lanes>(row: &[Self], i: usize) -> L;
    /// One weight as f32 (the tail past the last whole 8).
    fn to_f32(self) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load8<L: Lanes>(row: &[f32], i: usize) -> L {
        L::load(row.as_ptr().add(i))
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// bf16 bits (as stored): the high half of an f32.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct Bf16(pub u16);

/// IEEE half bits.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct F16(pub u16);

impl Elem for Bf16 {
    #[inline(always)]
    unsafe fn load8<L: Lanes>(row: &[Bf16], i: usize) -> L {
        L::bf16(row.as_ptr().add(i) as *const u16)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

impl Elem for F16 {
    #[inline(always)]
    unsafe fn load8<L: Lanes>(row: &[F16], i: usize) -> L {
        L::f16(row.as_ptr().add(i) as *const u16)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self.0).to_f32()
    }
}

/// The stored u16 bits as the wrapper type.
pub fn cast<T: Elem>(v: &[u16]) -> &[T] {
    assert_eq!(std::mem::size_of::<T>(), 2);
    // SAFETY: T is a #[repr(transparent)] newtype of u16: same size and alignment.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T, v.len()) }
}
