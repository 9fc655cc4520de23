"""The instruction builder: one method per instruction, jumps to string labels.

Called by the per-pod compiler (tailor.operator) and by tests that write
programs by hand. Pure: instructions in, `list[isa.Insn]` out.

How it behaves, and why:
- Registers are `Reg` values (R0..R10); a plain int operand is an immediate.
  The two cannot be confused, so `b.add64(R1, R2)` and `b.add64(R1, 2)` are
  different instructions by type, not by argument position.
- Errors (undefined or duplicate label, jump out of range, bad operand) are
  collected and raised together by `assemble()`, so a compiler bug shows every
  mistake at once with the instruction that made it.
- Code that can never run is dropped (the verifier rejects unreachable
  instructions): at once when it follows an unconditional jump or exit with
  no label between, and at assembly by walking the control flow from the
  first instruction, so a label nothing jumps to revives nothing.
- `jumps` counts the conditional jumps kept: each one doubles the paths
  the verifier may walk, so it is the program's complexity measure.
- `annotate(text)` tags the instructions emitted inside it with the rule or
  feature that produced them (`Insn.comment`); the disassembler shows it.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses

from tailor.datapath.ebpf import isa
from tailor.datapath.ebpf.errors import AssemblyError
from tailor.datapath.ebpf.helper_ids import Helper


class Reg(int):
    """A register operand (an int subclass so it encodes directly)."""

    def __repr__(self) -> str:
        return f"r{int(self)}"


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = (Reg(i) for i in range(11))
FP = R10

# Text form of comparisons, for jump methods: name -> jump op.
_COND = {name: isa.JMP_OPS[name] for name in isa.CONDITIONS}


@dataclasses.dataclass
class _Pending:
    """An instruction whose offset waits for a label's position."""
    insn: isa.Insn
    label: str
    wide: bool           # gotol: the offset goes in imm (32 bits), not off
    where: str           # for error messages


class Builder:
    def __init__(self) -> None:
        self._insns: list[isa.Insn | _Pending] = []
        self._slot = 0                        # slots emitted so far
        self._labels: dict[str, int] = {}     # label -> index of the entry it precedes
        self._reachable = True
        self._comment: str | None = None
        self._errors: list[str] = []
        self.jumps = 0

    # --- annotations and labels ------------------------------------------
    @contextlib.contextmanager
    def annotate(self, text: str):
        outer, self._comment = self._comment, text
        try:
            yield
        finally:
            self._comment = outer

    def label(self, name: str) -> None:
        if name in self._labels:
            self._errors.append(f"label {name!r} defined twice")
            return
        self._labels[name] = len(self._insns)
        self._reachable = True

    def has_label(self, name: str) -> bool:
        return name in self._labels

    @property
    def slots(self) -> int:
        """Slots emitted so far (a LD_IMM64 counts two), before dead code is
        pruned at assembly."""
        return self._slot

    # --- emission ----------------------------------------------------------
    def _emit(self, insn: isa.Insn | _Pending) -> None:
        if not self._reachable:
            return
        if self._comment is not None:
            if isinstance(insn, _Pending):
                insn.insn = dataclasses.replace(insn.insn, comment=self._comment)
            elif insn.comment is None:
                insn = dataclasses.replace(insn, comment=self._comment)
        self._insns.append(insn)
        self._slot += (insn.insn if isinstance(insn, _Pending) else insn).slots

    def raw(self, insn: isa.Insn) -> None:
        """Emit a ready-made instruction (not a jump to a label)."""
        self._emit(insn)

    def _operand(self, what: str, src) -> tuple[int, int, int]:
        """(source bit, src register, imm) for a register-or-immediate operand."""
        if isinstance(src, Reg):
            return isa.X, int(src), 0
        if isinstance(src, bool) or not isinstance(src, int):
            self._errors.append(f"{what}: operand {src!r} is neither a Reg nor an int")
            return isa.K, 0, 0
        if not -(1 << 31) <= src < (1 << 32):
            self._errors.append(f"{what}: immediate {src} does not fit 32 bits (use ld_imm64)")
            return isa.K, 0, 0
        return isa.K, 0, src

    def _reg(self, what: str, r) -> int:
        if not isinstance(r, Reg):
            self._errors.append(f"{what}: {r!r} is not a register")
            return 0
        return int(r)

    # --- ALU -----------------------------------------------------------------
    def alu(self, opname: str, dst: Reg, src, *, wide: bool = True, off: int = 0) -> None:
        klass = isa.ALU64 if wide else isa.ALU
        what = f"{opname}{64 if wide else 32}"
        bit, sreg, imm = self._operand(what, src)
        self._emit(isa.Insn(klass | isa.ALU_OPS[opname] | bit, self._reg(what, dst), sreg, off, imm))

    def mov64(self, dst, src): self.alu("mov", dst, src)
    def add64(self, dst, src): self.alu("add", dst, src)
    def sub64(self, dst, src): self.alu("sub", dst, src)
    def mul64(self, dst, src): self.alu("mul", dst, src)
    def div64(self, dst, src): self.alu("div", dst, src)
    def sdiv64(self, dst, src): self.alu("div", dst, src, off=1)
    def mod64(self, dst, src): self.alu("mod", dst, src)
    def smod64(self, dst, src): self.alu("mod", dst, src, off=1)
    def or64(self, dst, src): self.alu("or", dst, src)
    def and64(self, dst, src): self.alu("and", dst, src)
    def xor64(self, dst, src): self.alu("xor", dst, src)
    def lsh64(self, dst, src): self.alu("lsh", dst, src)
    def rsh64(self, dst, src): self.alu("rsh", dst, src)
    def arsh64(self, dst, src): self.alu("arsh", dst, src)
    def neg64(self, dst): self.alu("neg", dst, 0)

    def mov32(self, dst, src): self.alu("mov", dst, src, wide=False)
    def add32(self, dst, src): self.alu("add", dst, src, wide=False)
    def sub32(self, dst, src): self.alu("sub", dst, src, wide=False)
    def mul32(self, dst, src): self.alu("mul", dst, src, wide=False)
    def div32(self, dst, src): self.alu("div", dst, src, wide=False)
    def sdiv32(self, dst, src): self.alu("div", dst, src, wide=False, off=1)
    def mod32(self, dst, src): self.alu("mod", dst, src, wide=False)
    def smod32(self, dst, src): self.alu("mod", dst, src, wide=False, off=1)
    def or32(self, dst, src): self.alu("or", dst, src, wide=False)
    def and32(self, dst, src): self.alu("and", dst, src, wide=False)
    def xor32(self, dst, src): self.alu("xor", dst, src, wide=False)
    def lsh32(self, dst, src): self.alu("lsh", dst, src, wide=False)
    def rsh32(self, dst, src): self.alu("rsh", dst, src, wide=False)
    def arsh32(self, dst, src): self.alu("arsh", dst, src, wide=False)
    def neg32(self, dst): self.alu("neg", dst, 0, wide=False)

    def movsx64(self, dst: Reg, src: Reg, bits: int) -> None:
        """dst = (s{bits}) src, sign-extended to 64 bits (bits 8, 16 or 32)."""
        if bits not in (8, 16, 32):
            self._errors.append(f"movsx64: cannot sign-extend from {bits} bits")
        self.alu("mov", dst, self._as_reg("movsx64", src), off=bits)

    def movsx32(self, dst: Reg, src: Reg, bits: int) -> None:
        if bits not in (8, 16):
            self._errors.append(f"movsx32: cannot sign-extend from {bits} bits")
        self.alu("mov", dst, self._as_reg("movsx32", src), wide=False, off=bits)

    def _as_reg(self, what: str, r) -> Reg:
        if not isinstance(r, Reg):
            self._errors.append(f"{what}: source must be a register, got {r!r}")
            return R0
        return r

    def _end(self, klass: int, order: int, dst: Reg, bits: int, what: str) -> None:
        if bits not in (16, 32, 64):
            self._errors.append(f"{what}: width {bits} is not 16, 32 or 64")
        self._emit(isa.Insn(klass | isa.END | order, self._reg(what, dst), 0, 0, bits))

    def be(self, dst: Reg, bits: int) -> None:
        """Convert host (little-endian) to big-endian; network order in tailor."""
        self._end(isa.ALU, isa.TO_BE, dst, bits, "be")

    def le(self, dst: Reg, bits: int) -> None:
        self._end(isa.ALU, isa.TO_LE, dst, bits, "le")

    def bswap(self, dst: Reg, bits: int) -> None:
        self._end(isa.ALU64, isa.TO_LE, dst, bits, "bswap")

    # --- 64-bit immediates and map references ------------------------------
    def ld_imm64(self, dst: Reg, value: int) -> None:
        if not -(1 << 63) <= value < (1 << 64):
            self._errors.append(f"ld_imm64: {value} does not fit 64 bits")
            value = 0
        self._emit(isa.Insn(isa.OPCODE_LD_IMM64, self._reg("ld_imm64", dst), 0, 0,
                            value & 0xFFFFFFFFFFFFFFFF))

    def ld_map(self, dst: Reg, name: str) -> None:
        """dst = pointer to the map `name` (resolved to an fd at load)."""
        self._emit(isa.Insn(isa.OPCODE_LD_IMM64, self._reg("ld_map", dst),
                            isa.PSEUDO_MAP_FD, 0, 0, ref=name))

    def ld_map_value(self, dst: Reg, name: str, offset: int = 0) -> None:
        """dst = pointer into the single value of array map `name`."""
        self._emit(isa.Insn(isa.OPCODE_LD_IMM64, self._reg("ld_map_value", dst),
                            isa.PSEUDO_MAP_VALUE, 0, (offset & 0xFFFFFFFF) << 32, ref=name))

    # --- memory --------------------------------------------------------------
    def _size(self, what: str, nbytes: int) -> int:
        if nbytes not in isa.BYTES_SIZE:
            self._errors.append(f"{what}: access size {nbytes} is not 1, 2, 4 or 8 bytes")
            return isa.W
        return isa.BYTES_SIZE[nbytes]

    def _off(self, what: str, off: int) -> int:
        if not -0x8000 <= off <= 0x7FFF:
            self._errors.append(f"{what}: offset {off} does not fit 16 bits")
            return 0
        return off

    def load(self, nbytes: int, dst: Reg, base: Reg, off: int, *, group: str | None = None) -> None:
        """dst = *(u{8*nbytes} *)(base + off), zero-extended. `group`: the
        word of that node-wide group's bitmap, resolved at load (isa.Insn)."""
        self._emit(isa.Insn(isa.LDX | isa.MEM | self._size("load", nbytes),
                            self._reg("load", dst), self._reg("load", base), self._off("load", off),
                            group=group))

    def load_sx(self, nbytes: int, dst: Reg, base: Reg, off: int) -> None:
        """dst = *(s{8*nbytes} *)(base + off), sign-extended."""
        if nbytes == 8:
            self._errors.append("load_sx: 8-byte loads have nothing to sign-extend; use load")
        self._emit(isa.Insn(isa.LDX | isa.MEMSX | self._size("load_sx", nbytes),
                            self._reg("load_sx", dst), self._reg("load_sx", base),
                            self._off("load_sx", off)))

    def store(self, nbytes: int, base: Reg, off: int, src) -> None:
        """*(u{8*nbytes} *)(base + off) = src (register or immediate)."""
        size = self._size("store", nbytes)
        base_n = self._reg("store", base)
        off = self._off("store", off)
        if isinstance(src, Reg):
            self._emit(isa.Insn(isa.STX | isa.MEM | size, base_n, int(src), off))
        else:
            _, _, imm = self._operand("store", src)
            self._emit(isa.Insn(isa.ST | isa.MEM | size, base_n, 0, off, imm))

    def atomic(self, nbytes: int, opname: str, base: Reg, off: int, src: Reg,
               *, fetch: bool = False) -> None:
        """lock *(base + off) <op>= src; with fetch, src receives the old value.
        xchg and cmpxchg always fetch (cmpxchg compares with and writes r0)."""
        if nbytes not in (4, 8):
            self._errors.append(f"atomic: size {nbytes} is not 4 or 8 bytes")
        imm = isa.ATOMIC_OPS[opname] | (isa.FETCH if fetch else 0)
        self._emit(isa.Insn(isa.STX | isa.ATOMIC | self._size("atomic", nbytes),
                            self._reg("atomic", base), self._reg("atomic", src),
                            self._off("atomic", off), imm))

    # --- control flow -------------------------------------------------------
    def jump(self, label: str) -> None:
        """goto label (16-bit offset)."""
        self._emit(_Pending(isa.Insn(isa.JMP | isa.JA), label, False, "goto"))
        self._reachable = False

    def jump_long(self, label: str) -> None:
        """gotol label (32-bit offset, cpu v4)."""
        self._emit(_Pending(isa.Insn(isa.JMP32 | isa.JA), label, True, "gotol"))
        self._reachable = False

    def jump_if(self, cond: str, dst: Reg, src, label: str, *, wide: bool = True,
                group: str | None = None) -> None:
        """if dst <cond> src goto label; cond is a jump name (jeq, jsgt, jset...).
        wide=False compares the low 32 bits (JMP32)."""
        if cond not in _COND:
            self._errors.append(f"jump_if: unknown condition {cond!r} (one of {sorted(_COND)})")
            return
        klass = isa.JMP if wide else isa.JMP32
        bit, sreg, imm = self._operand(cond, src)
        self._emit(_Pending(isa.Insn(klass | _COND[cond] | bit, self._reg(cond, dst), sreg, 0, imm,
                                     group=group), label, False, cond))

    def jeq(self, dst, src, label): self.jump_if("jeq", dst, src, label)
    def jne(self, dst, src, label): self.jump_if("jne", dst, src, label)
    def jgt(self, dst, src, label): self.jump_if("jgt", dst, src, label)
    def jge(self, dst, src, label): self.jump_if("jge", dst, src, label)
    def jlt(self, dst, src, label): self.jump_if("jlt", dst, src, label)
    def jle(self, dst, src, label): self.jump_if("jle", dst, src, label)
    def jsgt(self, dst, src, label): self.jump_if("jsgt", dst, src, label)
    def jsge(self, dst, src, label): self.jump_if("jsge", dst, src, label)
    def jslt(self, dst, src, label): self.jump_if("jslt", dst, src, label)
    def jsle(self, dst, src, label): self.jump_if("jsle", dst, src, label)
    def jset(self, dst, src, label): self.jump_if("jset", dst, src, label)

    def call(self, helper: Helper | int) -> None:
        """Call a kernel helper. Clobbers r1-r5; result in r0."""
        self._emit(isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_HELPER, 0, int(helper)))

    def map_lookup(self, name: str, key_off: int) -> None:
        """r0 = map_lookup_elem(map `name`, key at r10 + key_off): a pointer
        to the value, or 0. Clobbers r1-r5."""
        self.ld_map(R1, name)
        self.mov64(R2, R10)
        self.add64(R2, key_off)
        self.call(Helper.map_lookup_elem)

    def map_update(self, name: str, key_off: int, value_off: int, flags: int = 0) -> None:
        """r0 = map_update_elem(map `name`, key at r10 + key_off, value at
        r10 + value_off, flags): 0 or a negative errno. Clobbers r1-r5."""
        self.ld_map(R1, name)
        self.mov64(R2, R10)
        self.add64(R2, key_off)
        self.mov64(R3, R10)
        self.add64(R3, value_off)
        self.mov64(R4, flags)
        self.call(Helper.map_update_elem)

    def call_local(self, label: str) -> None:
        """bpf-to-bpf call of the subprogram at label."""
        self._emit(_Pending(isa.Insn(isa.JMP | isa.CALL, 0, isa.CALL_LOCAL), label, True, "call"))

    def exit(self) -> None:
        self._emit(isa.Insn(isa.JMP | isa.EXIT))
        self._reachable = False

    def ret(self, value: int) -> None:
        """r0 = value; exit."""
        self.mov64(R0, value)
        self.exit()

    # --- assembly -----------------------------------------------------------
    def assemble(self) -> list[isa.Insn]:
        """Prune unreachable code, resolve labels; raise one AssemblyError
        listing every problem."""
        errors = list(self._errors)
        for entry in self._insns:
            if isinstance(entry, _Pending) and entry.label not in self._labels:
                errors.append(f"{entry.where}: undefined label {entry.label!r}")
        if errors:
            raise AssemblyError("program does not assemble:\n  " + "\n  ".join(errors))
        keep = self._reachable_entries()
        # Each kept entry's slot, and where each label lands after pruning.
        slot_of, slot = {}, 0
        for i in keep:
            slot_of[i] = slot
            entry = self._insns[i]
            slot += (entry.insn if isinstance(entry, _Pending) else entry).slots
        landing = self._landing(keep)

        def label_slot(name: str) -> int:
            target = landing(name)
            return slot if target is None else slot_of[target]

        out: list[isa.Insn] = []
        self.jumps = 0
        for i in keep:
            entry = self._insns[i]
            if not isinstance(entry, _Pending):
                out.append(entry)
                continue
            if entry.where not in ("goto", "gotol", "call"):
                self.jumps += 1
            delta = label_slot(entry.label) - slot_of[i] - 1
            if entry.wide:
                out.append(dataclasses.replace(entry.insn, imm=delta))
            elif -0x8000 <= delta <= 0x7FFF:
                out.append(dataclasses.replace(entry.insn, off=delta))
            else:
                errors.append(f"{entry.where} at slot {slot_of[i]}: label {entry.label!r} is "
                              f"{delta} slots away, beyond a 16-bit offset")
        if errors:
            raise AssemblyError("program does not assemble:\n  " + "\n  ".join(errors))
        return out

    def _reachable_entries(self) -> list[int]:
        """Indices of the entries kept: those control can reach from the
        first one, after threading jumps to jumps and dropping jumps to the
        next instruction. A raw jump (numeric offset) cannot be followed by
        label, so with one present nothing is pruned or threaded."""
        n = len(self._insns)
        for entry in self._insns:
            if (isinstance(entry, isa.Insn) and isa.cls(entry.code) in (isa.JMP, isa.JMP32)
                    and isa.op(entry.code) not in (isa.CALL, isa.EXIT)):
                return list(range(n))
        keep = list(range(n))
        while True:
            landing = self._landing(keep)
            self._thread(landing)
            pruned = self._walk(keep, landing)
            pruned = [i for k, i in enumerate(pruned)
                      if not (self._is_goto(i) and landing(self._insns[i].label)
                              == (pruned[k + 1] if k + 1 < len(pruned) else None))]
            if pruned == keep:
                return keep
            keep = pruned

    def _is_goto(self, i: int) -> bool:
        entry = self._insns[i]
        return isinstance(entry, _Pending) and entry.where in ("goto", "gotol")

    def _landing(self, keep: list[int]):
        """label -> index of the first kept entry at or after it (None: the end)."""
        def land(name: str) -> int | None:
            k = bisect.bisect_left(keep, self._labels[name])
            return keep[k] if k < len(keep) else None
        return land

    def _thread(self, landing) -> None:
        """A jump whose target is an unconditional jump goes straight on."""
        for entry in self._insns:
            if not isinstance(entry, _Pending) or entry.where == "call":
                continue
            seen = set()
            target = landing(entry.label)
            while target is not None and self._is_goto(target) and target not in seen:
                seen.add(target)
                entry.label = self._insns[target].label
                target = landing(entry.label)

    def _walk(self, keep: list[int], landing) -> list[int]:
        after = {i: (keep[k + 1] if k + 1 < len(keep) else None) for k, i in enumerate(keep)}
        seen, todo = set(), [keep[0]] if keep else []
        while todo:
            i = todo.pop()
            if i is None or i in seen:
                continue
            seen.add(i)
            entry = self._insns[i]
            if isinstance(entry, _Pending):
                todo.append(landing(entry.label))
                if entry.where not in ("goto", "gotol"):
                    todo.append(after[i])
            elif not (isa.cls(entry.code) == isa.JMP and isa.op(entry.code) == isa.EXIT):
                todo.append(after[i])
        return sorted(seen)
