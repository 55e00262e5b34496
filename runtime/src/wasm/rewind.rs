//! Rewinding a used instance to its just-instantiated state (the WIT's `tessera:wasm/rewind`).
//!
//! A resource gets a fresh instance per request by default. Instantiating one and tearing it
//! down costs wasmtime more than the rest of a simple request (about 16 us of CPU, spread over
//! its store, registry and pool bookkeeping). So when it loads a core module built with the SDK,
//! the host instruments it once, and the instance can put itself back after each request:
//!
//! - A second linear memory, the *dirty map*, holds one byte per 4 KiB page of the guest's
//!   memory. The guest's own code never addresses it.
//! - Every store, `memory.fill`, `memory.copy` and `memory.init` of the guest's code marks the
//!   pages it wrote.
//! - The memory the host writes into through the canonical ABI is marked too. That is every block
//!   an exported `cabi_realloc` hands out, and the return area of every call to an imported
//!   function (its last argument).
//! - The module's initial memory image (its data segments) is kept as a passive data segment.
//! - The body of the exported `rewind` is replaced. It restores every mutable global's initial
//!   value and every marked page: from the image, zero outside it. Then it clears the marks and
//!   returns the memory's size in 64 KiB pages.
//!
//! After a rewind, the globals and every byte of memory are those of a fresh instance. Only the
//! memory's size may be larger: pages the guest grew stay, zeroed. Modules whose state could
//! change in ways the instrumentation does not follow are not instrumented: they get a fresh
//! instance per request. That covers a start function, table writes, `data.drop`, imported
//! memories or globals that change, threads, SIMD, several memories, imported functions in
//! tables, and data at offsets that are not constants.

use anyhow::{Result, bail};
use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataCountSection, DataSection, Encode, ExportSection,
    Function, FunctionSection, Instruction, MemArg, MemorySection, MemoryType, TypeSection,
    ValType,
};
use wasmparser::{
    DataKind, ElementItems, ExternalKind, FuncType, Operator, Parser, Payload, TypeRef, Validator,
    WasmFeatures,
};

/// The instrumentation's version, part of a compiled artifact's name in the cache: a change to
/// what [`instrument`] writes must change it.
pub const VERSION: u32 = 1;
/// The WIT interface whose one function the host rewrites.
pub const INTERFACE: &str = "tessera:wasm/rewind@0.1.0";
/// The core export of that function, as wit-bindgen names it.
const EXPORT: &str = "tessera:wasm/rewind@0.1.0#rewind";

/// Features the instrumentation follows: WebAssembly 2.0 without SIMD (whose lane stores it
/// does not mark), which is what Rust's `wasm32-unknown-unknown` emits by default.
const FEATURES: WasmFeatures = WasmFeatures::WASM2.difference(WasmFeatures::SIMD);

/// A page of the dirty map: 4 KiB, the host's page, what one byte of the map stands for.
const PAGE_SHIFT: i32 = 12;
const PAGE: i32 = 1 << PAGE_SHIFT;
/// The dirty map's size in 64 KiB pages: one byte per 4 KiB page of a 4 GiB memory (2^20), and
/// a page more so the scan may read a word past the last entry.
const MAP_PAGES: u64 = 17;
/// The last entry of the dirty map that stands for a page of a 32-bit memory.
const MAP_LAST: i64 = (1 << 20) - 1;
/// The linear memory the guest's code uses, and the dirty map the instrumentation adds.
const GUEST_MEMORY: u32 = 0;
const MAP_MEMORY: u32 = 1;
/// The most of a module's initial memory image the instrumented module keeps (a copy of the data
/// segments and the gaps between them).
const MAX_IMAGE: u32 = 16 << 20;
/// Bytes marked after a call to an imported function, from its last argument: the canonical
/// ABI's return area of Tessera's imports is at most 16 bytes.
const RETURN_AREA: i32 = 64;

/// What the rewriting needs to know of the module, read before anything is written.
#[derive(Default)]
struct Facts<'a> {
    types: Vec<FuncType>,
    /// The type of every function, imported ones first.
    funcs: Vec<u32>,
    imported_funcs: u32,
    /// The defined globals that can change, with their initial value.
    mutable_globals: Vec<(u32, ConstExpr)>,
    imported_globals: u32,
    /// Active data segments: offset and bytes.
    data: Vec<(u32, &'a [u8])>,
    segments: u32,
    /// The exported function whose body becomes the rewind.
    rewind: Option<u32>,
    /// The functions exported as allocators the canonical ABI calls (`cabi_realloc`), sorted:
    /// the instrumented module wraps each, in this order.
    reallocs: Vec<u32>,
}

/// Whether an export is an allocator the canonical ABI calls to write into guest memory.
fn is_realloc(name: &str) -> bool {
    name.starts_with("cabi_") && name.ends_with("realloc")
}

/// The module rewritten so that its instances can be rewound, or why it cannot be.
pub fn instrument(wasm: &[u8]) -> Result<Vec<u8>> {
    if let Err(e) = Validator::new_with_features(FEATURES).validate_all(wasm) {
        bail!("uses WebAssembly the rewind does not follow: {e}");
    }
    let facts = Facts::read(wasm)?;
    Rewriter::new(&facts)?.write(wasm)
}

impl<'a> Facts<'a> {
    fn read(wasm: &'a [u8]) -> Result<Self> {
        let mut f = Facts::default();
        let mut memories = 0;
        let mut exports = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(s) => {
                    for ty in s.into_iter_err_on_gc_types() {
                        f.types.push(ty?);
                    }
                }
                Payload::ImportSection(s) => {
                    for import in s.into_imports() {
                        match import?.ty {
                            TypeRef::Func(t) => {
                                f.funcs.push(t);
                                f.imported_funcs += 1;
                            }
                            TypeRef::Memory(_) => bail!("imports its memory"),
                            TypeRef::Global(g) if g.mutable => {
                                bail!("imports a mutable global");
                            }
                            TypeRef::Global(_) => f.imported_globals += 1,
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(s) => {
                    for t in s {
                        f.funcs.push(t?);
                    }
                }
                Payload::MemorySection(s) => {
                    for m in s {
                        if m?.memory64 {
                            bail!("has a 64-bit memory");
                        }
                        memories += 1;
                    }
                }
                Payload::GlobalSection(s) => {
                    for (i, g) in s.into_iter().enumerate() {
                        let g = g?;
                        if g.ty.mutable {
                            let index = f.imported_globals + i as u32;
                            let init = RoundtripReencoder.const_expr(g.init_expr)?;
                            f.mutable_globals.push((index, init));
                        }
                    }
                }
                Payload::ExportSection(s) => {
                    for e in s {
                        let e = e?;
                        if e.kind == ExternalKind::Func {
                            exports.push((e.name, e.index));
                        }
                    }
                }
                Payload::StartSection { .. } => bail!("has a start function"),
                Payload::ElementSection(s) => {
                    for e in s {
                        let e = e?;
                        if let ElementItems::Functions(fs) = e.items {
                            for func in fs {
                                if func? < f.imported_funcs {
                                    bail!("puts an imported function in a table");
                                }
                            }
                        } else {
                            bail!("has element expressions");
                        }
                    }
                }
                Payload::DataSection(s) => {
                    for d in s {
                        let d = d?;
                        f.segments += 1;
                        let DataKind::Active {
                            memory_index: 0,
                            offset_expr,
                        } = d.kind
                        else {
                            bail!("has a passive data segment");
                        };
                        let mut ops = offset_expr.get_operators_reader();
                        let Ok(Operator::I32Const { value }) = ops.read() else {
                            bail!("has data at an offset that is not a constant");
                        };
                        let offset = value as u32;
                        if u64::from(offset) + d.data.len() as u64 > u64::from(u32::MAX) {
                            bail!("has data past 4 GiB");
                        }
                        f.data.push((offset, d.data));
                    }
                }
                _ => {}
            }
        }
        if memories != 1 {
            bail!("defines {memories} memories, not one");
        }
        for (name, index) in exports {
            let ty = f.func_type(index);
            if name == EXPORT {
                if !(ty.params().is_empty() && ty.results() == [wasmparser::ValType::I32]) {
                    bail!("exports {EXPORT} with the wrong type");
                }
                if index < f.imported_funcs {
                    bail!("exports an import as {EXPORT}");
                }
                f.rewind = Some(index);
            } else if is_realloc(name) {
                let i32 = wasmparser::ValType::I32;
                if ty.params() != [i32; 4] || ty.results() != [i32] {
                    bail!("exports {name} with the wrong type");
                }
                f.reallocs.push(index);
            }
        }
        f.reallocs.sort_unstable();
        f.reallocs.dedup();
        if f.rewind.is_none() {
            bail!("exports no {EXPORT} (built with an older SDK?)");
        }
        Ok(f)
    }

    fn func_type(&self, func: u32) -> &FuncType {
        &self.types[self.funcs[func as usize] as usize]
    }

    /// The module's initial memory from its first written 4 KiB page: where it starts and its
    /// bytes (the data segments applied in order, zero between them).
    fn image(&self) -> Result<(u32, Vec<u8>)> {
        let Some(start) = self.data.iter().map(|(o, _)| o & !(PAGE as u32 - 1)).min() else {
            return Ok((0, Vec::new()));
        };
        let end = self.data.iter().map(|(o, d)| o + d.len() as u32).max();
        let span = end.unwrap_or(start) - start;
        if span > MAX_IMAGE {
            bail!("has data spread over {span} bytes, more than the {MAX_IMAGE} kept to rewind");
        }
        let mut image = vec![0; span as usize];
        for (offset, bytes) in &self.data {
            let at = (offset - start) as usize;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        }
        Ok((start, image))
    }
}

/// Writes the instrumented module.
struct Rewriter<'f, 'a> {
    facts: &'f Facts<'a>,
    /// The functions the instrumentation adds: `mark(ptr, len)`, then one wrapper per realloc
    /// (`Facts::reallocs`, in order).
    mark: u32,
    mark_type: u32,
    /// The initial memory image (where it starts, its bytes) and the passive segment holding it.
    image: (u32, Vec<u8>),
    image_segment: u32,
}

/// The scratch locals an instrumented function gets after its own.
struct Scratch {
    addr: u32,
    i32: u32,
    i64: u32,
    f32: u32,
    f64: u32,
    len: u32,
    src: u32,
}

fn map_arg() -> MemArg {
    MemArg {
        offset: 0,
        align: 0,
        memory_index: MAP_MEMORY,
    }
}

impl<'f, 'a> Rewriter<'f, 'a> {
    fn new(facts: &'f Facts<'a>) -> Result<Self> {
        Ok(Rewriter {
            facts,
            mark: facts.funcs.len() as u32,
            mark_type: facts.types.len() as u32,
            image: facts.image()?,
            image_segment: facts.segments,
        })
    }

    fn write(&self, wasm: &[u8]) -> Result<Vec<u8>> {
        let mut re = RoundtripReencoder;
        let mut module = wasm_encoder::Module::new();
        let mut code = CodeSection::new();
        let mut bodies_left = 0;
        let mut next_func = self.facts.imported_funcs;
        let mut data_written = false;
        let mut data_count_written = false;
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(s) => {
                    let mut types = TypeSection::new();
                    re.parse_type_section(&mut types, s)?;
                    types.ty().function([ValType::I32, ValType::I32], []);
                    module.section(&types);
                }
                Payload::FunctionSection(s) => {
                    let mut funcs = FunctionSection::new();
                    re.parse_function_section(&mut funcs, s)?;
                    funcs.function(self.mark_type);
                    for realloc in &self.facts.reallocs {
                        funcs.function(self.facts.funcs[*realloc as usize]);
                    }
                    module.section(&funcs);
                }
                Payload::MemorySection(s) => {
                    let mut memories = MemorySection::new();
                    re.parse_memory_section(&mut memories, s)?;
                    memories.memory(MemoryType {
                        minimum: MAP_PAGES,
                        maximum: Some(MAP_PAGES),
                        memory64: false,
                        shared: false,
                        page_size_log2: None,
                    });
                    module.section(&memories);
                }
                Payload::ExportSection(s) => {
                    let mut exports = ExportSection::new();
                    for e in s {
                        let e = e?;
                        let mut index = e.index;
                        if e.kind == ExternalKind::Func && is_realloc(e.name) {
                            index = self.wrapper_of(e.index);
                        }
                        exports.export(e.name, re.export_kind(e.kind)?, index);
                    }
                    module.section(&exports);
                }
                Payload::DataCountSection { count, .. } => {
                    module.section(&DataCountSection { count: count + 1 });
                    data_count_written = true;
                }
                Payload::CodeSectionStart { count, .. } => {
                    if !data_count_written {
                        module.section(&DataCountSection {
                            count: self.facts.segments + 1,
                        });
                        data_count_written = true;
                    }
                    bodies_left = count;
                    if count == 0 {
                        self.finish_code(&mut code, &mut module);
                    }
                }
                Payload::CodeSectionEntry(body) => {
                    if Some(next_func) == self.facts.rewind {
                        code.function(&self.rewind_body());
                    } else {
                        code.function(&self.instrumented(next_func, body)?);
                    }
                    next_func += 1;
                    bodies_left -= 1;
                    if bodies_left == 0 {
                        self.finish_code(&mut code, &mut module);
                    }
                }
                Payload::DataSection(s) => {
                    let mut data = DataSection::new();
                    re.parse_data_section(&mut data, s)?;
                    data.passive(self.image.1.iter().copied());
                    module.section(&data);
                    data_written = true;
                }
                Payload::End(_) => {
                    if !data_written {
                        let mut data = DataSection::new();
                        data.passive(Vec::new());
                        module.section(&data);
                    }
                }
                Payload::Version { .. } => {}
                other => {
                    // Sections the rewrite leaves as they are (imports, tables, globals,
                    // elements, custom ones) are copied as they are: the added functions, types,
                    // memory and data segment come after the module's own, so no index in them
                    // changes.
                    if let Some((id, range)) = other.as_section() {
                        module.section(&wasm_encoder::RawSection {
                            id,
                            data: &wasm[range],
                        });
                    }
                }
            }
        }
        Ok(module.finish())
    }

    fn wrapper_of(&self, realloc: u32) -> u32 {
        let at = self.facts.reallocs.binary_search(&realloc);
        self.mark + 1 + at.expect("every realloc export has a wrapper") as u32
    }

    /// Appends the added functions' bodies and writes the code section.
    fn finish_code(&self, code: &mut CodeSection, module: &mut wasm_encoder::Module) {
        code.function(&mark_body());
        for realloc in &self.facts.reallocs {
            code.function(&self.realloc_wrapper(*realloc));
        }
        module.section(code);
    }

    /// `realloc`, then the block it returns marked: the host writes into it.
    fn realloc_wrapper(&self, realloc: u32) -> Function {
        let mut f = Function::new([(1, ValType::I32)]);
        for i in 0..4 {
            f.instruction(&Instruction::LocalGet(i));
        }
        f.instruction(&Instruction::Call(realloc))
            .instruction(&Instruction::LocalTee(4))
            .instruction(&Instruction::LocalGet(3))
            .instruction(&Instruction::Call(self.mark))
            .instruction(&Instruction::LocalGet(4))
            .instruction(&Instruction::End);
        f
    }

    /// A body of the guest's with every write to memory marked in the dirty map.
    fn instrumented(&self, func: u32, body: wasmparser::FunctionBody) -> Result<Function> {
        let mut re = RoundtripReencoder;
        let mut locals = Vec::new();
        let mut next = self.facts.func_type(func).params().len() as u32;
        for pair in body.get_locals_reader()? {
            let (count, ty) = pair?;
            locals.push((count, re.val_type(ty)?));
            next += count;
        }
        let s = Scratch {
            addr: next,
            i32: next + 1,
            i64: next + 2,
            f32: next + 3,
            f64: next + 4,
            len: next + 5,
            src: next + 6,
        };
        locals.extend([
            (2, ValType::I32),
            (1, ValType::I64),
            (1, ValType::F32),
            (1, ValType::F64),
            (2, ValType::I32),
        ]);
        let mut f = Function::new(locals);
        let mut ops = body.get_operators_reader()?;
        while !ops.eof() {
            let op = ops.read()?;
            match op {
                Operator::I32Store { memarg } => self.store(&mut f, &s, s.i32, 4, memarg, &op)?,
                Operator::I64Store { memarg } => self.store(&mut f, &s, s.i64, 8, memarg, &op)?,
                Operator::F32Store { memarg } => self.store(&mut f, &s, s.f32, 4, memarg, &op)?,
                Operator::F64Store { memarg } => self.store(&mut f, &s, s.f64, 8, memarg, &op)?,
                Operator::I32Store8 { memarg } => self.store(&mut f, &s, s.i32, 1, memarg, &op)?,
                Operator::I32Store16 { memarg } => self.store(&mut f, &s, s.i32, 2, memarg, &op)?,
                Operator::I64Store8 { memarg } => self.store(&mut f, &s, s.i64, 1, memarg, &op)?,
                Operator::I64Store16 { memarg } => self.store(&mut f, &s, s.i64, 2, memarg, &op)?,
                Operator::I64Store32 { memarg } => self.store(&mut f, &s, s.i64, 4, memarg, &op)?,
                // [dst, value, len] and [dst, src, len]: the op, then [dst, dst + len) marked.
                Operator::MemoryFill { .. }
                | Operator::MemoryCopy { .. }
                | Operator::MemoryInit { .. } => {
                    f.instruction(&Instruction::LocalSet(s.len))
                        .instruction(&Instruction::LocalSet(s.src))
                        .instruction(&Instruction::LocalTee(s.addr))
                        .instruction(&Instruction::LocalGet(s.src))
                        .instruction(&Instruction::LocalGet(s.len))
                        .instruction(&re.instruction(op)?)
                        .instruction(&Instruction::LocalGet(s.addr))
                        .instruction(&Instruction::LocalGet(s.len))
                        .instruction(&Instruction::Call(self.mark));
                }
                Operator::Call { function_index }
                    if function_index < self.facts.imported_funcs
                        && self.facts.func_type(function_index).params().last()
                            == Some(&wasmparser::ValType::I32) =>
                {
                    // The host may write the results at the last argument (the return area).
                    f.instruction(&Instruction::LocalTee(s.addr))
                        .instruction(&Instruction::Call(function_index))
                        .instruction(&Instruction::LocalGet(s.addr))
                        .instruction(&Instruction::I32Const(RETURN_AREA))
                        .instruction(&Instruction::Call(self.mark));
                }
                Operator::TableSet { .. }
                | Operator::TableGrow { .. }
                | Operator::TableFill { .. }
                | Operator::TableCopy { .. }
                | Operator::TableInit { .. }
                | Operator::ElemDrop { .. }
                | Operator::DataDrop { .. } => {
                    bail!("changes state the rewind does not follow ({op:?})");
                }
                other => {
                    f.instruction(&re.instruction(other)?);
                }
            }
        }
        Ok(f)
    }

    /// `store` with the pages of its first and last byte marked after it.
    fn store(
        &self,
        f: &mut Function,
        s: &Scratch,
        value: u32,
        width: u32,
        memarg: wasmparser::MemArg,
        op: &Operator,
    ) -> Result<()> {
        f.instruction(&Instruction::LocalSet(value))
            .instruction(&Instruction::LocalTee(s.addr))
            .instruction(&Instruction::LocalGet(value))
            .instruction(&RoundtripReencoder.instruction(op.clone())?);
        // The store succeeded, so `addr + offset + width` is inside a 32-bit memory: the sums
        // below do not wrap.
        let first = memarg.offset as u32;
        mark_page(f, s.addr, first);
        if width > 1 {
            mark_page(f, s.addr, first.wrapping_add(width - 1));
        }
        Ok(())
    }

    /// The replacement body of the exported `rewind`: globals, then every marked page.
    fn rewind_body(&self) -> Function {
        use Instruction as I;
        let (start, image) = (self.image.0, &self.image.1);
        let end = start + image.len() as u32;
        let (i, n, p, len) = (0, 1, 2, 3);
        let mut f = Function::new([(4, ValType::I32)]);
        for (global, init) in &self.facts.mutable_globals {
            // A constant expression's bytes are instructions, then `end`.
            let mut bytes = Vec::new();
            init.encode(&mut bytes);
            bytes.pop();
            f.raw(bytes);
            f.instruction(&I::GlobalSet(*global));
        }
        f.instruction(&I::MemorySize(GUEST_MEMORY))
            .instruction(&I::I32Const(16 - PAGE_SHIFT))
            .instruction(&I::I32Shl)
            .instruction(&I::LocalSet(n))
            .instruction(&I::Block(BlockType::Empty))
            .instruction(&I::Loop(BlockType::Empty))
            // while i < n
            .instruction(&I::LocalGet(i))
            .instruction(&I::LocalGet(n))
            .instruction(&I::I32GeU)
            .instruction(&I::BrIf(1))
            // eight clean pages at once
            .instruction(&I::LocalGet(i))
            .instruction(&I::I64Load(map_arg()))
            .instruction(&I::I64Eqz)
            .instruction(&I::If(BlockType::Empty))
            .instruction(&I::LocalGet(i))
            .instruction(&I::I32Const(8))
            .instruction(&I::I32Add)
            .instruction(&I::LocalSet(i))
            .instruction(&I::Br(1))
            .instruction(&I::End)
            .instruction(&I::LocalGet(i))
            .instruction(&I::I32Load8U(map_arg()))
            .instruction(&I::If(BlockType::Empty))
            // the mark cleared, the page zeroed
            .instruction(&I::LocalGet(i))
            .instruction(&I::I32Const(0))
            .instruction(&I::I32Store8(map_arg()))
            .instruction(&I::LocalGet(i))
            .instruction(&I::I32Const(PAGE_SHIFT))
            .instruction(&I::I32Shl)
            .instruction(&I::LocalTee(p))
            .instruction(&I::I32Const(0))
            .instruction(&I::I32Const(PAGE))
            .instruction(&I::MemoryFill(GUEST_MEMORY));
        if !image.is_empty() {
            // and, where it overlaps the image (which starts on a page), the image copied in:
            // `start <= p < end`: min(PAGE, end - p) bytes from `p - start`.
            f.instruction(&I::LocalGet(p))
                .instruction(&I::I32Const(start as i32))
                .instruction(&I::I32GeU)
                .instruction(&I::LocalGet(p))
                .instruction(&I::I32Const(end as i32))
                .instruction(&I::I32LtU)
                .instruction(&I::I32And)
                .instruction(&I::If(BlockType::Empty))
                .instruction(&I::LocalGet(p))
                .instruction(&I::LocalGet(p))
                .instruction(&I::I32Const(start as i32))
                .instruction(&I::I32Sub)
                .instruction(&I::I32Const(end as i32))
                .instruction(&I::LocalGet(p))
                .instruction(&I::I32Sub)
                .instruction(&I::LocalTee(len))
                .instruction(&I::I32Const(PAGE))
                .instruction(&I::LocalGet(len))
                .instruction(&I::I32Const(PAGE))
                .instruction(&I::I32LtU)
                .instruction(&I::Select)
                .instruction(&I::MemoryInit {
                    mem: GUEST_MEMORY,
                    data_index: self.image_segment,
                })
                .instruction(&I::End);
        }
        f.instruction(&I::End)
            .instruction(&I::LocalGet(i))
            .instruction(&I::I32Const(1))
            .instruction(&I::I32Add)
            .instruction(&I::LocalSet(i))
            .instruction(&I::Br(0))
            .instruction(&I::End)
            .instruction(&I::End)
            .instruction(&I::MemorySize(GUEST_MEMORY))
            .instruction(&I::End);
        f
    }
}

/// Marks the page of `addr + offset` in the dirty map.
fn mark_page(f: &mut Function, addr: u32, offset: u32) {
    f.instruction(&Instruction::LocalGet(addr));
    if offset != 0 {
        f.instruction(&Instruction::I32Const(offset as i32))
            .instruction(&Instruction::I32Add);
    }
    f.instruction(&Instruction::I32Const(PAGE_SHIFT))
        .instruction(&Instruction::I32ShrU)
        .instruction(&Instruction::I32Const(1))
        .instruction(&Instruction::I32Store8(map_arg()));
}

/// `mark(ptr, len)`: marks the pages of `[ptr, ptr + len)`. The end is computed in 64 bits and
/// capped at the map's last entry, so a last argument that is no pointer at all (an import
/// without a return area) marks too much at worst, and never traps.
fn mark_body() -> Function {
    use Instruction as I;
    let (ptr, len) = (0, 1);
    let mut f = Function::new([(1, ValType::I64)]);
    let last = 2;
    f.instruction(&I::LocalGet(len))
        .instruction(&I::I32Eqz)
        .instruction(&I::If(BlockType::Empty))
        .instruction(&I::Return)
        .instruction(&I::End)
        // last = min((ptr + len - 1) >> 12, MAP_LAST), in 64 bits
        .instruction(&I::LocalGet(ptr))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::LocalGet(len))
        .instruction(&I::I64ExtendI32U)
        .instruction(&I::I64Add)
        .instruction(&I::I64Const(1))
        .instruction(&I::I64Sub)
        .instruction(&I::I64Const(PAGE_SHIFT as i64))
        .instruction(&I::I64ShrU)
        .instruction(&I::LocalTee(last))
        .instruction(&I::I64Const(MAP_LAST))
        .instruction(&I::LocalGet(last))
        .instruction(&I::I64Const(MAP_LAST))
        .instruction(&I::I64LtU)
        .instruction(&I::Select)
        .instruction(&I::LocalSet(last))
        // memory.fill(map, first, 1, last - first + 1)
        .instruction(&I::LocalGet(ptr))
        .instruction(&I::I32Const(PAGE_SHIFT))
        .instruction(&I::I32ShrU)
        .instruction(&I::I32Const(1))
        .instruction(&I::LocalGet(last))
        .instruction(&I::I32WrapI64)
        .instruction(&I::LocalGet(ptr))
        .instruction(&I::I32Const(PAGE_SHIFT))
        .instruction(&I::I32ShrU)
        .instruction(&I::I32Sub)
        .instruction(&I::I32Const(1))
        .instruction(&I::I32Add)
        .instruction(&I::MemoryFill(MAP_MEMORY))
        .instruction(&I::End);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Config, Engine, Instance, Linker, Memory, Module, Store, Val};

    /// A guest that writes memory every way the instrumentation follows, and changes globals.
    const GUEST: &str = r#"
      (module
        (import "host" "ret" (func $ret (param i32 i32)))
        (memory (export "memory") 2)
        (global $sp (export "sp") (mut i32) (i32.const 4096))
        (global $count (export "count") (mut i64) (i64.const 7))
        (global $heap (export "heap") (mut i32) (i32.const 70000))
        (global $fixed i32 (i32.const 3))
        (data (i32.const 65536) "the image starts on page 16")
        (data (i32.const 66000) "\01\02\03")
        (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
          (local $p i32)
          (local.set $p (global.get $heap))
          (global.set $heap (i32.add (global.get $heap) (local.get 3)))
          (local.get $p))
        (func (export "scribble") (param $seed i32)
          (i32.store (i32.const 100) (local.get $seed))
          (i64.store offset=4090 (i32.const 2) (i64.const -1))
          (f32.store (i32.const 8192) (f32.const 1.5))
          (f64.store (i32.const 65540) (f64.const 2.5))
          (i32.store8 (i32.const 12000) (local.get $seed))
          (i32.store16 (i32.const 12287) (i32.const -1))
          (i64.store8 (i32.const 20000) (i64.const 9))
          (i64.store16 (i32.const 45055) (i64.const -1))
          (i64.store32 (i32.const 28670) (i64.const -1))
          (memory.fill (i32.const 30000) (local.get $seed) (i32.const 10000))
          (memory.copy (i32.const 50000) (i32.const 65536) (i32.const 64))
          (drop (memory.grow (i32.const 1)))
          (i32.store (i32.const 131572) (local.get $seed))
          (call $ret (local.get $seed) (i32.const 90000))
          (global.set $sp (i32.const 1))
          (global.set $count (i64.const 99)))
        (func (export "tessera:wasm/rewind@0.1.0#rewind") (result i32) unreachable))
    "#;

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_multi_memory(true);
        Engine::new(&config).unwrap()
    }

    /// An instance of `wasm` whose `host.ret(seed, ptr)` writes 16 bytes of `seed` at `ptr`,
    /// as the canonical ABI writes an import's results into its return area.
    fn instance(engine: &Engine, wasm: &[u8]) -> (Store<()>, Instance) {
        let mut linker = Linker::new(engine);
        linker
            .func_wrap(
                "host",
                "ret",
                |mut caller: wasmtime::Caller<'_, ()>, seed: i32, ptr: i32| {
                    let memory = caller.get_export("memory").unwrap().into_memory().unwrap();
                    memory
                        .write(&mut caller, ptr as usize, &[seed as u8; 16])
                        .unwrap();
                },
            )
            .unwrap();
        let mut store = Store::new(engine, ());
        let module = Module::new(engine, wasm).unwrap();
        let instance = linker.instantiate(&mut store, &module).unwrap();
        (store, instance)
    }

    /// Linear memory and the exported globals.
    fn state(store: &mut Store<()>, instance: &Instance) -> (Vec<u8>, Vec<String>) {
        let memory: Memory = instance.get_memory(&mut *store, "memory").unwrap();
        let bytes = memory.data(&*store).to_vec();
        let globals = ["sp", "count", "heap"]
            .iter()
            .map(|g| {
                let v: Val = instance
                    .get_global(&mut *store, g)
                    .unwrap()
                    .get(&mut *store);
                format!("{v:?}")
            })
            .collect();
        (bytes, globals)
    }

    #[test]
    fn a_rewound_instance_is_byte_for_byte_a_fresh_one() {
        let original = wat::parse_str(GUEST).unwrap();
        let instrumented = instrument(&original).unwrap();
        let engine = engine();
        let (mut store, fresh) = instance(&engine, &original);
        let (fresh_memory, fresh_globals) = state(&mut store, &fresh);

        let (mut store, used) = instance(&engine, &instrumented);
        assert_eq!(
            state(&mut store, &used),
            (fresh_memory.clone(), fresh_globals.clone()),
            "instrumenting changes no initial state"
        );
        let realloc = used
            .get_typed_func::<(i32, i32, i32, i32), i32>(&mut store, "cabi_realloc")
            .unwrap();
        let scribble = used
            .get_typed_func::<i32, ()>(&mut store, "scribble")
            .unwrap();
        let rewind = used.get_typed_func::<(), i32>(&mut store, EXPORT).unwrap();
        let memory = used.get_memory(&mut store, "memory").unwrap();
        for seed in 1..4 {
            // The host writes a lowered argument into a block the guest allocated for it.
            let block = realloc.call(&mut store, (0, 0, 1, 300)).unwrap();
            memory
                .write(&mut store, block as usize, &[0x5a; 300])
                .unwrap();
            scribble.call(&mut store, seed).unwrap();
            let (dirty, globals) = state(&mut store, &used);
            assert_ne!(globals, fresh_globals);
            let differing = (0..fresh_memory.len())
                .filter(|&i| dirty[i] != fresh_memory[i])
                .count();
            assert!(differing > 10_000, "the guest wrote ({differing} bytes)");

            // Each round grows memory by a page: rewound, it stays, zeroed.
            let pages = 2 + seed;
            assert_eq!(rewind.call(&mut store, ()).unwrap(), pages);
            let (memory_now, globals) = state(&mut store, &used);
            assert_eq!(globals, fresh_globals);
            assert_eq!(memory_now.len(), (pages as usize) << 16);
            let wrong: Vec<usize> = (0..memory_now.len())
                .filter(|&i| memory_now[i] != fresh_memory.get(i).copied().unwrap_or(0))
                .take(8)
                .collect();
            assert!(wrong.is_empty(), "bytes not rewound at {wrong:?}");
        }
    }

    #[test]
    fn the_marked_return_area_covers_the_results_of_every_import() {
        let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/../wasm-sdk/wit");
        let mut resolve = wit_parser::Resolve::default();
        resolve.push_dir(wit).unwrap();
        let mut sizes = wit_parser::SizeAlign::default();
        sizes.fill(&resolve);
        let (_, world) = resolve
            .worlds
            .iter()
            .find(|(_, w)| w.name == "resource-module")
            .unwrap();
        let mut results = 0;
        for item in world.imports.values() {
            let wit_parser::WorldItem::Interface { id, .. } = item else {
                continue;
            };
            for f in resolve.interfaces[*id].functions.values() {
                if let Some(ty) = &f.result {
                    let size = sizes.size(ty).size_wasm32();
                    assert!(size <= RETURN_AREA as usize, "{}: {size} bytes", f.name);
                    results += 1;
                }
            }
        }
        assert!(results >= 9, "{results} imports with results");
    }

    #[test]
    fn modules_whose_state_it_cannot_follow_are_refused_with_the_reason() {
        let rewind =
            r#"(func (export "tessera:wasm/rewind@0.1.0#rewind") (result i32) i32.const 0)"#;
        let cases = [
            ("(memory 1) (func $s) (start $s)", "start function"),
            (
                "(memory 1) (table 1 funcref) (func (table.set 0 (i32.const 0) (ref.null func)))",
                "TableSet",
            ),
            ("(memory 1) (data \"x\") ", "passive data"),
            (
                "(memory 1) (memory 1)",
                "WebAssembly the rewind does not follow",
            ),
            ("(import \"m\" \"m\" (memory 1))", "imports its memory"),
            (
                "(memory 1) (func (drop (i32x4.splat (i32.const 0))))",
                "does not follow",
            ),
        ];
        for (body, why) in cases {
            let wasm = wat::parse_str(format!("(module {body} {rewind})")).unwrap();
            let e = instrument(&wasm).unwrap_err().to_string();
            assert!(e.contains(why), "{body}: {e}");
        }
        let no_export = wat::parse_str("(module (memory 1))").unwrap();
        assert!(
            instrument(&no_export)
                .unwrap_err()
                .to_string()
                .contains("exports no")
        );
    }
}
