// A run of four weights in the integer form of the q8_0 / q4 formats (`w_int4`): their codes as
// four bytes (the first column in the lowest), a scale, and an offset: w = d * (q - c) for q8_0
// (c = 0), w = d * (16 q - c) for q4 (W_OFFSET). The integer kernels (matvec/int8.wgsl) multiply
// the bytes by activation bytes; `w_load4` widens them.
struct WInt {
    q: u32,
    d: f32,
    c: i32,
}
