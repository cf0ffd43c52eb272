"""UI text in English and Simplified Chinese, chosen by ``Accept-Language``."""

from __future__ import annotations

from flask import request

STRINGS: dict[str, dict[str, str]] = {
    "en": {
        "app": "clawweb",
        "new_chat": "New chat",
        "conversations": "Conversations",
        "untitled": "New conversation",
        "rename": "Rename",
        "delete": "Delete",
        "rename_prompt": "New title",
        "delete_confirm": "Delete this conversation?",
        "model": "Model",
        "system_prompt": "System prompt",
        "save": "Save",
        "saved": "Saved",
        "placeholder": "Ask anything. Enter sends, Shift+Enter starts a new line.",
        "send": "Send",
        "stop": "Stop",
        "think": "Think",
        "thinking": "Thinking",
        "thought": "Thoughts",
        "regenerate": "Regenerate",
        "retry": "Retry",
        "copy": "Copy",
        "copied": "Copied",
        "you": "You",
        "assistant": "Assistant",
        "queued_next": "You are next",
        "queued_ahead": "{n} requests ahead of you",
        "connected": "Connected",
        "connecting": "Connecting…",
        "reconnecting": "Reconnecting…",
        "offline": "Offline",
        "stopped": "Stopped",
        "error": "Error",
        "ttft": "first token {s} s",
        "rate": "{r} tokens/s",
        "tokens": "{n} tokens",
        "empty": "Start a conversation: type a question below.",
        "simulator": "Simulator: no Ollama was found, answers are canned text.",
        "menu": "Menu",
    },
    "zh": {
        "app": "clawweb",
        "new_chat": "新对话",
        "conversations": "对话",
        "untitled": "新对话",
        "rename": "重命名",
        "delete": "删除",
        "rename_prompt": "新标题",
        "delete_confirm": "删除这个对话？",
        "model": "模型",
        "system_prompt": "系统提示词",
        "save": "保存",
        "saved": "已保存",
        "placeholder": "输入问题。Enter 发送，Shift+Enter 换行。",
        "send": "发送",
        "stop": "停止",
        "think": "思考",
        "thinking": "思考中",
        "thought": "思考过程",
        "regenerate": "重新生成",
        "retry": "重试",
        "copy": "复制",
        "copied": "已复制",
        "you": "你",
        "assistant": "助手",
        "queued_next": "下一个就是你",
        "queued_ahead": "前面还有 {n} 个请求",
        "connected": "已连接",
        "connecting": "连接中…",
        "reconnecting": "重新连接中…",
        "offline": "离线",
        "stopped": "已停止",
        "error": "出错",
        "ttft": "首字 {s} 秒",
        "rate": "{r} 字/秒",
        "tokens": "{n} 个词元",
        "empty": "在下方输入问题，开始对话。",
        "simulator": "模拟器：未找到 Ollama，回答为预设文本。",
        "menu": "菜单",
    },
}
LANG_TAGS = {"en": "en", "zh": "zh-CN"}


def language() -> str:
    """``zh`` for any Chinese preference ranked above English, else ``en``."""
    best = request.accept_languages.best_match(["en", "zh", "zh-CN", "zh-Hans"], default="en")
    return "zh" if best.startswith("zh") else "en"


def strings(lang: str) -> dict[str, str]:
    return STRINGS[lang]
