package dev.qlora4j.infer;

/** Streaming callback: called for each new token of each batch row, with the text it completed. */
@FunctionalInterface
public interface TokenListener {
    /**
     * @param row     index of the prompt in the batch
     * @param tokenId the token just generated
     * @param newText text this token completed (may be empty while a multi-byte character is incomplete)
     */
    void onToken(int row, int tokenId, String newText);

    TokenListener NONE = (row, tokenId, newText) -> {};
}
