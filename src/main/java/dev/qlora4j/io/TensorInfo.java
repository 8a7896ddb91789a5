package dev.qlora4j.io;

import dev.qlora4j.tensor.DType;
import dev.qlora4j.tensor.Tensor;

import java.util.Arrays;

/**
 * One safetensors header entry. {@code begin}/{@code end} are byte offsets relative to the
 * start of the data area (the bytes after the header), as the file's "data_offsets" states them.
 */
public record TensorInfo(String name, DType dtype, int[] shape, long begin, long end) {
    public TensorInfo {
        shape = shape.clone();
    }

    @Override
    public int[] shape() { return shape.clone(); }

    public long numel() { return Tensor.numel(shape); }

    public long byteSize() { return end - begin; }

    @Override
    public boolean equals(Object o) {
        return o instanceof TensorInfo t && name.equals(t.name) && dtype == t.dtype
                && Arrays.equals(shape, t.shape) && begin == t.begin && end == t.end;
    }

    @Override
    public int hashCode() {
        return (name.hashCode() * 31 + dtype.hashCode()) * 31 + Arrays.hashCode(shape);
    }

    @Override
    public String toString() {
        return name + ": " + dtype + Arrays.toString(shape) + " @[" + begin + ", " + end + ")";
    }
}
