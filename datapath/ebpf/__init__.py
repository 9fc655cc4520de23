"""The eBPF toolkit: instruction set, builder, text assembler and disassembler,
the libbpf-backed kernel loader, and the userspace VM.

Layers, each importing only those before it:
  isa, errors, maps            pure data: encodings, error types, map specs
  syntax                       pure data: LLVM's BPF text syntax as tables
  builder, asm, disasm         pure: instructions in, bytes or text out
  libbpf, kernel, attach       I/O: the bpf() syscall via libbpf, netlink
  vm                           pure: interprets the same bytes on a packet
"""
