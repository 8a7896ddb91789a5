package dev.qlora4j.tensor;

import java.util.Locale;

/**
 * Element types. Names follow safetensors' dtype strings (F32, BF16, U8 ...), so a header
 * entry maps to a DType with {@link #fromSafetensors(String)} and back with {@link #safetensorsName()}.
 * Packed 4-bit weights are stored as U8 tensors plus a QuantState (as bitsandbytes does), not as a dtype.
 */
public enum DType {
    F64(8, true), F32(4, true), F16(2, true), BF16(2, true),
    I64(8, false), I32(4, false), I16(2, false), I8(1, false), U8(1, false), BOOL(1, false);

    private final int byteSize;
    private final boolean floating;

    DType(int byteSize, boolean floating) {
        this.byteSize = byteSize;
        this.floating = floating;
    }

    public int byteSize() { return byteSize; }

    public boolean isFloating() { return floating; }

    public String safetensorsName() { return name(); }

    public static DType fromSafetensors(String name) {
        try {
            return valueOf(name.toUpperCase(Locale.ROOT));
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("unsupported safetensors dtype '" + name
                    + "' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
        }
    }

    /** Parses torch-style names as found in config.json ("float32", "bfloat16", "torch.float16", "fp16" ...). */
    public static DType fromTorchName(String name) {
        String n = name.toLowerCase(Locale.ROOT).replace("torch.", "");
        return switch (n) {
            case "float32", "float", "fp32", "f32" -> F32;
            case "float16", "half", "fp16", "f16" -> F16;
            case "bfloat16", "bf16" -> BF16;
            case "float64", "double", "f64" -> F64;
            case "int8", "i8" -> I8;
            case "uint8", "u8" -> U8;
            case "int32", "i32" -> I32;
            case "int64", "i64" -> I64;
            default -> throw new IllegalArgumentException("unknown dtype '" + name
                    + "' (use float32, bfloat16 or float16)");
        };
    }

    /** The torch name transformers writes in config.json ("float32", "bfloat16" ...). */
    public String torchName() {
        return switch (this) {
            case F64 -> "float64"; case F32 -> "float32"; case F16 -> "float16"; case BF16 -> "bfloat16";
            case I64 -> "int64"; case I32 -> "int32"; case I16 -> "int16"; case I8 -> "int8";
            case U8 -> "uint8"; case BOOL -> "bool";
        };
    }
}
