package dev.qlora4j.tensor;

/** Where a tensor's bytes live: host memory or one CUDA device. */
public record Device(Kind kind, int index) {
    public enum Kind { CPU, CUDA }

    public static final Device CPU = new Device(Kind.CPU, -1);

    public static Device cuda(int index) { return new Device(Kind.CUDA, index); }

    public boolean isCpu() { return kind == Kind.CPU; }

    public boolean isCuda() { return kind == Kind.CUDA; }

    @Override
    public String toString() { return isCpu() ? "cpu" : "cuda:" + index; }
}
